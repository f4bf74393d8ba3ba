//! The store contract: what ingest, dispatch and the CLI rely on from the
//! database, run once on SQLite and once on PostgreSQL (a fresh database per
//! test). Every test is written once, as `async fn name(store: Store)`, and
//! listed in the `contract!` call at the bottom, which makes
//! `store_contract::sqlite::name` and `store_contract::postgres::name`.

use notifier::domain::delivery::{AttemptOutcome, DeliveryStatus, MailKind};
use notifier::domain::directory::{UserRecord, VersionCheck};
use notifier::domain::event::{EventType, ValidationRules, parse_user_record};
use notifier::domain::ids::{AgbCode, EmailAddress, Gebruikersnummer};
use notifier::domain::recipients::{PlannedDelivery, Rule, Served};
use notifier::pipeline::ingest::{Incoming, IngestOutcome, Ingestor, Source};
use notifier::pipeline::plan;
use notifier::store::deliveries::{self as dl, AttemptRecord, Claimed, DeliveryFilter, Transition};
use notifier::store::directory::{self as dir, UserChange};
use notifier::store::events::{self as ev, NewEvent, NewQuarantine};
use notifier::store::{Backend, Store, StoreError};
use std::collections::BTreeSet;

const AGB: &str = "04111111";
const MODULE: &str = "uitvraag.vragenlijst_klaargezet";

fn nr(i: u32) -> Gebruikersnummer {
    Gebruikersnummer::parse(&format!("3{i:013}")).unwrap()
}

fn user(i: u32, email: &str, versie: i64, signer: bool) -> UserRecord {
    let v = serde_json::json!({
        "gebruikersnummer": nr(i).as_str(),
        "naam": format!("Gebruiker {i}"),
        "email": email,
        "status": "actief",
        "koppelingen": [{"agb_code": AGB, "rechten": ["uitvragen", "contracteren"],
                         "tekenbevoegd": signer, "contactpersoon": signer}],
        "versie": versie,
    });
    parse_user_record(v.as_object().unwrap(), "").unwrap()
}

async fn add_users(store: &Store, n: u32) {
    let mut tx = store.begin().await.unwrap();
    for i in 0..n {
        let u = user(i, &format!("u{i}@praktijk.example"), 1, i == 0);
        dir::apply_user(&mut tx, &u, 1).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn add_event(store: &Store, id: &str) {
    let mut c = store.pool().acquire().await.unwrap();
    ev::insert_event(&mut c, &new_event(id)).await.unwrap();
}

fn new_event(id: &str) -> NewEvent<'_> {
    NewEvent {
        id,
        event_type: MODULE,
        agb_code: Some(AGB),
        occurred_at_ms: 1_000,
        received_at_ms: 2_000,
        payload: "{}",
        state: notifier::domain::event::EventState::Accepted,
        detail: None,
    }
}

fn planned(address: &str, users: &[u32]) -> PlannedDelivery {
    PlannedDelivery {
        kind: MailKind::Module(EventType::parse(MODULE).unwrap()),
        address: EmailAddress::parse(address).unwrap(),
        rules: vec![Rule::U(notifier::domain::directory::Recht::Uitvragen)],
        users: users
            .iter()
            .map(|i| Served {
                gebruikersnummer: nr(*i),
                versie: 1,
                rule: Rule::U(notifier::domain::directory::Recht::Uitvragen),
            })
            .collect(),
        about: String::new(),
        notice: None,
    }
}

/// Plans `p` for `event_id`, created and due at `due_ms`; returns the new delivery's id.
async fn plan(
    conn: &mut sqlx::AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    due_ms: i64,
    deadline_ms: i64,
) -> String {
    dl::insert_planned(conn, event_id, p, due_ms, due_ms, deadline_ms)
        .await
        .unwrap()
        .expect("a new delivery")
}

/// One event with a delivery to `u{i}@praktijk.example` for each user; returns the delivery ids.
async fn event_with_deliveries(
    store: &Store,
    event_id: &str,
    users: u32,
    due_ms: i64,
) -> Vec<String> {
    add_event(store, event_id).await;
    let mut tx = store.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..users {
        let p = planned(&format!("u{i}@praktijk.example"), &[i]);
        ids.push(plan(&mut tx, event_id, &p, due_ms, due_ms + 1_000_000).await);
    }
    tx.commit().await.unwrap();
    ids
}

async fn claim(store: &Store, owner: &str, now_ms: i64, lease_ms: i64, limit: i64) -> Vec<Claimed> {
    let mut tx = store.begin().await.unwrap();
    let c = dl::claim(
        &mut tx,
        store.backend(),
        owner,
        now_ms,
        now_ms + lease_ms,
        limit,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    c
}

async fn finish(
    store: &Store,
    id: &str,
    owner: &str,
    a: Option<&AttemptRecord>,
    t: &Transition,
) -> bool {
    let mut tx = store.begin().await.unwrap();
    let kept = dl::finish(&mut tx, id, owner, a, t).await.unwrap();
    tx.commit().await.unwrap();
    kept
}

async fn list(store: &Store, f: DeliveryFilter) -> Vec<dl::DeliveryRow> {
    let mut c = store.pool().acquire().await.unwrap();
    dl::list(&mut c, &f).await.unwrap()
}

async fn status_of(store: &Store, id: &str) -> DeliveryStatus {
    list(store, DeliveryFilter::default())
        .await
        .into_iter()
        .find(|d| d.id == id)
        .unwrap()
        .status
}

fn attempt(outcome: AttemptOutcome, code: Option<i64>) -> AttemptRecord {
    AttemptRecord {
        started_at_ms: 5_000,
        checked_at_ms: Some(4_990),
        duration_ms: 12,
        outcome,
        smtp_code: code,
        enhanced_code: code.map(|c| format!("{}.0.0", c / 100)),
        detail: format!("reply {code:?}"),
        policy_rejection: false,
        template_source: Some("builtin".into()),
        template_version: Some("0123456789ab".into()),
    }
}

/// Waits until another session of this database waits on a row lock
/// (PostgreSQL). On SQLite a second writer waits in `BEGIN IMMEDIATE`
/// instead, which cannot be observed from outside, and nothing is waited for.
async fn wait_for_lock_waiter(store: &Store) {
    if store.backend() != Backend::Postgres {
        return;
    }
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if n > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second writer never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- schema

async fn a_fresh_database_is_behind_until_migrated(store: Store) {
    // `store` is migrated; a second, empty database is not.
    store.check_schema().await.unwrap();
    let backend = match store.backend() {
        Backend::Sqlite => crate::support::TestBackend::Sqlite,
        Backend::Postgres => crate::support::TestBackend::Postgres,
    };
    let empty = crate::support::TestDb::new(backend).await;
    let other = Store::connect(&empty.url, 2).await.unwrap();
    match other.check_schema().await {
        Err(StoreError::Behind { current, latest }) => {
            assert_eq!(current, None);
            assert!(latest >= 1);
        }
        r => panic!("expected Behind, got {r:?}"),
    }
    other.migrate().await.unwrap();
    other.check_schema().await.unwrap();
    other.migrate().await.unwrap(); // idempotent
    other.close().await;
}

// ---------------------------------------------------------------- events

async fn events_are_recorded_once_by_id(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    assert!(ev::insert_event(&mut c, &new_event("e-1")).await.unwrap());
    let mut again = new_event("e-1");
    again.payload = "{\"other\": true}";
    assert!(
        !ev::insert_event(&mut c, &again).await.unwrap(),
        "a repeat is a duplicate"
    );
    ev::set_event_state(
        &mut c,
        "e-1",
        notifier::domain::event::EventState::Unroutable,
        Some("no contact person"),
    )
    .await
    .unwrap();
    let e = ev::get_event(&mut c, "e-1").await.unwrap().unwrap();
    assert_eq!(e.payload, "{}", "the first copy is kept");
    assert_eq!(e.event_type, MODULE);
    assert_eq!(e.agb_code.as_deref(), Some(AGB));
    assert_eq!((e.occurred_at, e.received_at), (1_000, 2_000));
    assert_eq!(e.state, notifier::domain::event::EventState::Unroutable);
    assert_eq!(e.detail.as_deref(), Some("no contact person"));
    assert!(ev::get_event(&mut c, "nope").await.unwrap().is_none());
}

async fn events_are_listed_by_state_type_and_agb_and_keep_their_notes(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    for (id, agb, received_at_ms, state) in [
        ("e-1", Some(AGB), 100, "accepted"),
        ("e-2", Some(AGB), 200, "unroutable"),
        ("e-3", Some("04222222"), 300, "accepted"),
        ("e-4", None, 400, "applied"),
    ] {
        let e = NewEvent {
            agb_code: agb,
            received_at_ms,
            state: notifier::domain::event::EventState::parse(state).unwrap(),
            ..new_event(id)
        };
        ev::insert_event(&mut c, &e).await.unwrap();
    }
    let ids = |v: Vec<ev::EventRow>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    // Each case lists newest first, at most ten unless it says otherwise.
    let newest = |f: ev::EventFilter| ev::EventFilter {
        newest_first: true,
        limit: f.limit.or(Some(10)),
        ..f
    };
    let cases = [
        (
            "everything",
            ev::EventFilter::default(),
            vec!["e-4", "e-3", "e-2", "e-1"],
        ),
        (
            "one state",
            ev::EventFilter {
                states: vec![notifier::domain::event::EventState::Unroutable],
                ..Default::default()
            },
            vec!["e-2"],
        ),
        (
            "one AGB code",
            ev::EventFilter {
                agb_code: Some(AGB.into()),
                ..Default::default()
            },
            vec!["e-2", "e-1"],
        ),
        (
            "state, type and AGB code together",
            ev::EventFilter {
                states: vec![notifier::domain::event::EventState::Accepted],
                event_type: Some(MODULE.into()),
                agb_code: Some(AGB.into()),
                ..Default::default()
            },
            vec!["e-1"],
        ),
        (
            "a limit",
            ev::EventFilter {
                limit: Some(1),
                ..Default::default()
            },
            vec!["e-4"],
        ),
    ];
    for (what, filter, want) in cases {
        let got = ids(ev::list_events(&mut c, &newest(filter)).await.unwrap());
        assert_eq!(got, want, "{what}");
    }
    for (since_ms, want) in [(150, vec!["e-2"]), (0, vec!["e-1", "e-2"])] {
        let got = ids(ev::recent_for_agb(&mut c, AGB, since_ms).await.unwrap());
        assert_eq!(got, want, "recent for the AGB code since {since_ms}");
    }
    ev::append_detail(&mut c, "e-1", "first note")
        .await
        .unwrap();
    ev::append_detail(&mut c, "e-1", "second note")
        .await
        .unwrap();
    let got = ev::get_event(&mut c, "e-1").await.unwrap().unwrap();
    assert_eq!(got.detail.as_deref(), Some("first note; second note"));
}

async fn text_from_outside_is_always_storable(store: Store) {
    // PostgreSQL refuses U+0000 in text; a quarantine row, an event note and
    // an attempt detail must be storable whatever a message or a relay said.
    let mut c = store.pool().acquire().await.unwrap();
    let id = ev::quarantine(
        &mut c,
        &NewQuarantine {
            received_at_ms: 1,
            source: "amqp",
            routing_key: Some("uitvraag.\0x"),
            event_id: Some("id-\0"),
            event_type: Some("type\0"),
            reason: "id: contains \0",
            raw: b"{\"id\": \"id-\\u0000\"}",
            size: 17,
        },
    )
    .await
    .expect("a quarantine row with NUL in every text field is stored");
    let row = ev::get_quarantine(&mut c, id).await.unwrap().unwrap();
    assert_eq!(row.routing_key.as_deref(), Some("uitvraag.\u{FFFD}x"));
    assert_eq!(row.event_id.as_deref(), Some("id-\u{FFFD}"));
    assert_eq!(
        row.raw, b"{\"id\": \"id-\\u0000\"}",
        "raw bytes are kept as they came"
    );
    add_event(&store, "e-nul").await;
    ev::append_detail(&mut c, "e-nul", "relay said \0")
        .await
        .unwrap();
    let e = ev::get_event(&mut c, "e-nul").await.unwrap().unwrap();
    assert_eq!(e.detail.as_deref(), Some("relay said \u{FFFD}"));
}

async fn data_errors_are_told_apart_from_other_errors(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    add_event(&store, "e-dup").await;
    // A second row with the same primary key: an integrity error.
    let dup = sqlx::query("INSERT INTO events (id, type, occurred_at, received_at, payload, state) VALUES ('e-dup', 't', 1, 1, '{}', 'accepted')")
        .execute(&mut *c)
        .await
        .map_err(StoreError::from)
        .unwrap_err();
    assert!(dup.is_data_error(), "{dup}");
    if store.backend() == Backend::Postgres {
        // What a NUL does when it reaches PostgreSQL unescaped.
        let nul = sqlx::query("UPDATE events SET detail = $1 WHERE id = 'e-dup'")
            .bind("a\0b")
            .execute(&mut *c)
            .await
            .map_err(StoreError::from)
            .unwrap_err();
        assert!(nul.is_data_error(), "{nul}");
    }
    // A statement that cannot run at all is not about the data.
    let missing = sqlx::query("SELECT * FROM no_such_table")
        .execute(&mut *c)
        .await
        .map_err(StoreError::from)
        .unwrap_err();
    assert!(!missing.is_data_error(), "{missing}");
    drop(c);
    // A closed pool (the database went away) is not about the data either.
    store.close().await;
    let gone = store.ping().await.unwrap_err();
    assert!(!gone.is_data_error(), "{gone}");
}

async fn quarantine_keeps_bad_input_and_its_redrives(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    fn q<'a>(raw: &'a [u8], reason: &'a str) -> NewQuarantine<'a> {
        NewQuarantine {
            received_at_ms: 7,
            source: "amqp",
            routing_key: Some("x.y"),
            event_id: None,
            event_type: Some("contract.iets"),
            reason,
            raw,
            size: raw.len(),
        }
    }
    let big: Vec<u8> = (0..70 * 1024).map(|i| (i % 251) as u8).collect();
    let a = ev::quarantine(&mut c, &q(b"\xff\xfe not utf-8", "not valid JSON"))
        .await
        .unwrap();
    let b = ev::quarantine(&mut c, &q(&big, "too big")).await.unwrap();
    assert!(b > a, "ids grow");

    let rows = ev::list_quarantine(&mut c, true, 10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![b, a],
        "newest first"
    );
    let first = ev::get_quarantine(&mut c, a).await.unwrap().unwrap();
    assert_eq!(first.raw, b"\xff\xfe not utf-8", "bytes kept as they came");
    assert_eq!(first.routing_key.as_deref(), Some("x.y"));
    assert_eq!(first.event_type.as_deref(), Some("contract.iets"));
    assert_eq!((first.state.as_str(), first.redrives), ("open", 0));
    let second = ev::get_quarantine(&mut c, b).await.unwrap().unwrap();
    assert_eq!(second.size, 70 * 1024, "size is the whole message");
    assert_eq!(
        second.raw.len(),
        ev::QUARANTINE_RAW_LIMIT,
        "only the first 64 KiB kept"
    );
    assert_eq!(ev::open_quarantine_count(&mut c).await.unwrap(), 2);

    ev::mark_redrive(&mut c, a, Some("still not valid JSON"), 9)
        .await
        .unwrap();
    let r = ev::get_quarantine(&mut c, a).await.unwrap().unwrap();
    assert_eq!(
        (r.state.as_str(), r.redrives, r.reason.as_str()),
        ("open", 1, "still not valid JSON")
    );
    ev::mark_redrive(&mut c, a, None, 10).await.unwrap();
    let r = ev::get_quarantine(&mut c, a).await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.redrives), ("redriven", 2));
    assert_eq!(ev::open_quarantine_count(&mut c).await.unwrap(), 1);
    assert_eq!(
        ev::list_quarantine(&mut c, true, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        ev::list_quarantine(&mut c, false, 10).await.unwrap().len(),
        2
    );
    assert!(ev::get_quarantine(&mut c, b + 100).await.unwrap().is_none());
}

// ---------------------------------------------------------------- directory

async fn directory_applies_only_newer_versions(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    let v1 = user(1, "a@praktijk.example", 1, true);
    assert_eq!(
        dir::apply_user(&mut c, &v1, 1).await.unwrap(),
        VersionCheck::New
    );
    let mut same = user(1, "b@praktijk.example", 1, false);
    assert_eq!(
        dir::apply_user(&mut c, &same, 2).await.unwrap(),
        VersionCheck::Stale
    );
    let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
    assert_eq!(
        u.email.as_str(),
        "a@praktijk.example",
        "a stale update changes nothing"
    );

    let snap = dir::agb_snapshot(&mut c, &AgbCode::parse(AGB).unwrap())
        .await
        .unwrap();
    assert_eq!(snap.members.len(), 1);
    assert!(snap.members[0].tekenbevoegd && snap.members[0].contactpersoon);
    assert!(
        dir::user_links(&mut c, &nr(1)).await.unwrap()[0].1,
        "a signer"
    );

    same.versie = 2;
    assert_eq!(
        dir::apply_user(&mut c, &same, 3).await.unwrap(),
        VersionCheck::Newer
    );
    let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
    assert_eq!((u.email.as_str(), u.versie), ("b@praktijk.example", 2));
    let snap = dir::agb_snapshot(&mut c, &AgbCode::parse(AGB).unwrap())
        .await
        .unwrap();
    assert!(
        !snap.members[0].tekenbevoegd,
        "links replaced by the newer version"
    );
    assert!(!dir::user_links(&mut c, &nr(1)).await.unwrap()[0].1);
    dir::log_skipped(&mut c, "event", nr(1).as_str(), "stale", 4)
        .await
        .unwrap();
}

async fn concurrent_directory_writes_never_overwrite_a_newer_version(store: Store) {
    let email = |versie: i64| format!("v{versie}@praktijk.example");
    {
        let mut c = store.pool().acquire().await.unwrap();
        dir::apply_user(&mut c, &user(1, &email(1), 1, false), 1)
            .await
            .unwrap();
    }
    // Writer A holds its transaction open while writer B starts: on
    // PostgreSQL B read the versie before A's and waits on A's row lock; on
    // SQLite B waits for the write lock. Either way the newer versie wins.
    let races = [
        (
            "the older write waits and loses",
            3,
            2,
            VersionCheck::Stale,
            3,
        ),
        (
            "the newer write waits and still wins",
            4,
            5,
            VersionCheck::Newer,
            5,
        ),
    ];
    for (what, first, second, second_says, kept) in races {
        let mut a = store.begin().await.unwrap();
        let ra = dir::apply_user(&mut a, &user(1, &email(first), first, false), first)
            .await
            .unwrap();
        assert_eq!(ra, VersionCheck::Newer, "{what}");
        let s2 = store.clone();
        let later = user(1, &email(second), second, false);
        let b = tokio::spawn(async move {
            let mut tx = s2.begin().await.unwrap();
            let r = dir::apply_user(&mut tx, &later, second).await.unwrap();
            tx.commit().await.unwrap();
            r
        });
        wait_for_lock_waiter(&store).await;
        a.commit().await.unwrap();
        assert_eq!(b.await.unwrap(), second_says, "{what}");
        let mut c = store.pool().acquire().await.unwrap();
        let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
        assert_eq!(
            (u.email.to_string(), u.versie),
            (email(kept), kept),
            "{what}"
        );
    }
}

async fn address_changes_and_revocations_follow_the_versie_rule(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    dir::apply_user(&mut c, &user(1, "oud@praktijk.example", 2, true), 1)
        .await
        .unwrap();
    // (user, versie of the change, outcome); user 9 does not exist.
    let new = EmailAddress::parse("nieuw@praktijk.example").unwrap();
    for (who, versie, want) in [
        (1, 2, UserChange::Stale),
        (9, 9, UserChange::UnknownUser),
        (1, 3, UserChange::Applied),
    ] {
        let got = dir::set_email(&mut c, &nr(who), &new, versie, 2)
            .await
            .unwrap();
        assert_eq!(got, want, "address change of user {who} at versie {versie}");
    }
    let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
    assert_eq!((u.email.as_str(), u.versie), ("nieuw@praktijk.example", 3));

    for (who, versie, want) in [
        (1, 3, UserChange::Stale),
        (9, 9, UserChange::UnknownUser),
        (1, 4, UserChange::Applied),
    ] {
        let got = dir::revoke(&mut c, &nr(who), versie, 4).await.unwrap();
        assert_eq!(got, want, "revocation of user {who} at versie {versie}");
    }
    let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
    assert_eq!((u.status.as_str(), u.versie), ("ingetrokken", 4));
}

/// The directory keeps each address as registered next to the lower-cased
/// form it compares; deliveries keep the lower-cased one and, besides it,
/// the form planned.
async fn addresses_are_kept_as_registered_next_to_the_compared_form(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    dir::apply_user(&mut c, &user(1, "J.deVries@Praktijk.example", 1, true), 1)
        .await
        .unwrap();
    let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
    assert_eq!(
        (u.email.as_str(), u.email.registered()),
        ("j.devries@praktijk.example", "J.deVries@Praktijk.example")
    );
    let snapshot = dir::agb_snapshot(&mut c, &AgbCode::parse(AGB).unwrap())
        .await
        .unwrap();
    assert_eq!(
        snapshot.members[0].email.registered(),
        "J.deVries@Praktijk.example"
    );
    let new = EmailAddress::parse("Nieuw.Adres@Praktijk.example").unwrap();
    let changed = dir::set_email(&mut c, &nr(1), &new, 2, 2).await.unwrap();
    assert_eq!(changed, UserChange::Applied);
    let u = dir::get_users(&mut c, &[nr(1)])
        .await
        .unwrap()
        .remove(&nr(1))
        .unwrap();
    assert_eq!(
        (u.email.as_str(), u.email.registered()),
        (
            "nieuw.adres@praktijk.example",
            "Nieuw.Adres@Praktijk.example"
        )
    );

    add_event(&store, "e-registered").await;
    let id = plan(
        &mut c,
        "e-registered",
        &planned("Nieuw.Adres@Praktijk.example", &[1]),
        10,
        1_000_000,
    )
    .await;
    let served = dl::served_users(&mut c, &id).await.unwrap();
    assert_eq!(
        served[0].email.as_deref(),
        Some("nieuw.adres@praktijk.example")
    );
    assert_eq!(
        served[0].email_registered.as_deref(),
        Some("Nieuw.Adres@Praktijk.example")
    );
    drop(c);
    let claimed = claim(&store, "me", 20, 1_000, 10).await;
    assert_eq!(claimed[0].address, "nieuw.adres@praktijk.example");
    assert_eq!(
        claimed[0].address_registered.as_deref(),
        Some("Nieuw.Adres@Praktijk.example")
    );

    // A row written before migration 0007 has no registered form: the
    // compared one stands in for it.
    let mut c = store.pool().acquire().await.unwrap();
    sqlx::query("UPDATE users SET email_registered = NULL")
        .execute(&mut *c)
        .await
        .unwrap();
    let u = dir::get_user(&mut c, &nr(1)).await.unwrap().unwrap();
    assert_eq!(u.email.registered(), "nieuw.adres@praktijk.example");
    let served = dl::served_users(&mut c, &id).await.unwrap();
    assert_eq!(
        served[0].email_registered.as_deref(),
        Some("nieuw.adres@praktijk.example")
    );
}

async fn organisations_follow_the_versie_rule(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    let agb = AgbCode::parse(AGB).unwrap();
    assert_eq!(dir::organisation_name(&mut c, AGB).await.unwrap(), None);
    for (naam, versie, now_ms, want) in [
        ("Fysio Noord", 1, 1, VersionCheck::New),
        ("Oud", 1, 2, VersionCheck::Stale),
        ("Fysio & Co", 2, 3, VersionCheck::Newer),
    ] {
        let got = dir::apply_organisation(&mut c, &agb, naam, versie, now_ms)
            .await
            .unwrap();
        assert_eq!(got, want, "{naam} at versie {versie}");
    }
    assert_eq!(
        dir::organisation_name(&mut c, AGB)
            .await
            .unwrap()
            .as_deref(),
        Some("Fysio & Co")
    );
    let snap = dir::agb_snapshot(&mut c, &agb).await.unwrap();
    assert_eq!(snap.naam.as_deref(), Some("Fysio & Co"));
}

// ---------------------------------------------------------------- deliveries

async fn planning_the_same_mail_twice_creates_one_delivery(store: Store) {
    add_users(&store, 2).await;
    add_event(&store, "e-1").await;
    let mut tx = store.begin().await.unwrap();
    let p = planned("u0@praktijk.example", &[0, 1]);
    let id = plan(&mut tx, "e-1", &p, 1, 99).await;
    assert_eq!(
        dl::insert_planned(&mut tx, "e-1", &p, 2, 2, 99)
            .await
            .unwrap(),
        None
    );
    tx.commit().await.unwrap();
    let rows = list(&store, DeliveryFilter::default()).await;
    assert_eq!(rows.len(), 1);
    let d = &rows[0];
    assert_eq!(
        (d.id.as_str(), d.status.as_str(), d.attempts),
        (id.as_str(), "pending", 0)
    );
    assert_eq!(d.message_id, dl::message_id_for(&id));
    assert_eq!((d.created_at, d.due_at, d.deadline), (1, 1, 99));
    let mut c = store.pool().acquire().await.unwrap();
    let served = dl::served_users(&mut c, &id).await.unwrap();
    assert_eq!(served.len(), 2);
    assert_eq!(served[0].email.as_deref(), Some("u0@praktijk.example"));
    assert_eq!(
        served[0].status,
        Some(notifier::domain::directory::UserStatus::Actief)
    );
}

async fn concurrent_claimers_never_get_the_same_delivery(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 60, 1).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("claimer-{w}");
            let mut got = Vec::new();
            loop {
                let batch = claim(&s, &owner, 10, 60_000, 7).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for t in tasks {
        let got = t.await.unwrap();
        total += got.len();
        seen.extend(got);
    }
    assert_eq!(total, 60, "no delivery claimed twice");
    assert_eq!(
        seen,
        ids.into_iter().collect::<BTreeSet<_>>(),
        "every delivery claimed"
    );
    let rows = list(&store, DeliveryFilter::default()).await;
    assert!(rows.iter().all(|d| d.status == DeliveryStatus::Sending));
}

async fn only_due_deliveries_are_claimed_oldest_due_first(store: Store) {
    let later = event_with_deliveries(&store, "e-later", 1, 500).await;
    let now = event_with_deliveries(&store, "e-now", 2, 100).await;
    let c = claim(&store, "a", 200, 1_000, 10).await;
    assert_eq!(
        c.iter().map(|d| d.id.clone()).collect::<BTreeSet<_>>(),
        now.iter().cloned().collect()
    );
    assert_eq!(
        claim(&store, "a", 200, 1_000, 10).await.len(),
        0,
        "claimed ones are not due"
    );
    let c = claim(&store, "a", 600, 1_000, 10).await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].id, later[0]);
    assert_eq!(c[0].kind_name(), MODULE);
    assert_eq!(c[0].address, "u0@praktijk.example");
    assert_eq!(c[0].message_id, dl::message_id_for(&later[0]));
}

async fn an_expired_lease_is_claimable_again_and_the_old_holder_loses_it(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 1, 1).await;
    assert_eq!(claim(&store, "old", 10, 1_000, 10).await.len(), 1);
    assert_eq!(
        claim(&store, "new", 500, 1_000, 10).await.len(),
        0,
        "lease still held"
    );
    let again = claim(&store, "new", 1_011, 1_000, 10).await;
    assert_eq!(again.len(), 1, "claimable once the lease expired");
    let sent = Transition::Sent {
        sent_to: "u0@praktijk.example".into(),
        at_ms: 1_100,
    };
    let a = attempt(AttemptOutcome::Sent, Some(250));
    assert!(
        !finish(&store, &ids[0], "old", Some(&a), &sent).await,
        "the old holder lost its lease"
    );
    assert_eq!(status_of(&store, &ids[0]).await, DeliveryStatus::Sending);
    assert!(finish(&store, &ids[0], "new", Some(&a), &sent).await);
    let d = list(&store, DeliveryFilter::default()).await.remove(0);
    assert_eq!(
        (d.status.as_str(), d.attempts, d.sent_at),
        ("sent", 1, Some(1_100))
    );
    assert!(
        !finish(&store, &ids[0], "new", Some(&a), &sent).await,
        "a final delivery is not finished twice"
    );
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(
        dl::attempts(&mut c, &ids[0]).await.unwrap().len(),
        1,
        "the refused finish recorded nothing"
    );
}

async fn a_renewed_lease_holds_and_only_its_owner_renews_it(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 2, 1).await;
    assert_eq!(claim(&store, "me", 10, 1_000, 10).await.len(), 2);
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(
        dl::renew_leases(&mut c, "me", &ids, 5_000).await.unwrap(),
        2
    );
    drop(c);
    assert!(
        claim(&store, "other", 2_000, 1_000, 10).await.is_empty(),
        "a renewed lease is not claimable after its first term"
    );
    assert_eq!(claim(&store, "other", 5_001, 1_000, 10).await.len(), 2);
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(
        dl::renew_leases(&mut c, "me", &ids, 9_000).await.unwrap(),
        0,
        "a lease another owner holds is not renewed"
    );
    assert_eq!(dl::held_by_others(&mut c, "me", &ids).await.unwrap(), 2);
    assert_eq!(dl::held_by_others(&mut c, "other", &ids).await.unwrap(), 0);
}

async fn a_policy_refusal_is_counted_and_undone_once(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 1, 1).await;
    assert_eq!(claim(&store, "me", 10, 1_000, 10).await.len(), 1);
    let mut a = attempt(AttemptOutcome::Permanent, Some(550));
    a.policy_rejection = true;
    let retry = Transition::Retry {
        due_ms: 100,
        retry_step: 1,
        error: "550 5.7.1 access denied".into(),
        sent_to: None,
    };
    assert!(finish(&store, &ids[0], "me", Some(&a), &retry).await);
    let counted = claim(&store, "me", 150, 1_000, 10).await;
    assert_eq!(
        (counted[0].retry_step, counted[0].policy_rejections),
        (1, 1)
    );
    assert!(finish(&store, &ids[0], "me", Some(&a), &retry).await);
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(
        dl::undo_policy_rejections(&mut c, &ids, 200).await.unwrap(),
        1
    );
    assert_eq!(
        dl::undo_policy_rejections(&mut c, &ids, 300).await.unwrap(),
        0,
        "a refusal is undone once"
    );
    drop(c);
    let again = claim(&store, "me", 250, 1_000, 10).await;
    assert_eq!(again.len(), 1, "due at the time the undo set");
    assert_eq!((again[0].retry_step, again[0].policy_rejections), (0, 1));
    let mut c = store.pool().acquire().await.unwrap();
    let outcomes: Vec<&str> = dl::attempts(&mut c, &ids[0])
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["permanent", "relay_fault"]);
}

async fn released_leases_are_due_again_at_once(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 3, 1).await;
    assert_eq!(claim(&store, "me", 10, 60_000, 2).await.len(), 2);
    assert_eq!(claim(&store, "other", 10, 60_000, 1).await.len(), 1);
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(dl::release_leases(&mut c, "me").await.unwrap(), 2);
    drop(c);
    let pending = list(
        &store,
        DeliveryFilter {
            status: Some(DeliveryStatus::Pending),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(pending.len(), 2, "only my leases released");
    assert_eq!(claim(&store, "next", 10, 60_000, 10).await.len(), 2);
    assert_eq!(ids.len(), 3);
}

async fn attempts_are_numbered_and_retries_keep_their_step(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 1, 1).await;
    let id = &ids[0];
    claim(&store, "me", 10, 1_000, 1).await;
    let retry = Transition::Retry {
        due_ms: 2_000,
        retry_step: 1,
        error: "450 4.2.0 greylisted".into(),
        sent_to: Some("u0@praktijk.example".into()),
    };
    assert!(
        finish(
            &store,
            id,
            "me",
            Some(&attempt(AttemptOutcome::Transient, Some(450))),
            &retry
        )
        .await
    );
    let d = list(&store, DeliveryFilter::default()).await.remove(0);
    assert_eq!(
        (d.status.as_str(), d.attempts, d.due_at),
        ("pending", 1, 2_000)
    );
    assert_eq!(d.last_error.as_deref(), Some("450 4.2.0 greylisted"));
    assert!(
        claim(&store, "me", 1_999, 1_000, 1).await.is_empty(),
        "not due before due_at"
    );
    let c = claim(&store, "me", 2_000, 1_000, 1).await;
    assert_eq!((c[0].attempts, c[0].retry_step), (1, 1));
    // A check before sending records no attempt.
    let cancel = Transition::Failed {
        error: "template".into(),
        sent_to: None,
    };
    assert!(finish(&store, id, "me", None, &cancel).await);
    let mut conn = store.pool().acquire().await.unwrap();
    let a = dl::attempts(&mut conn, id).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].n, a[0].outcome.as_str(), a[0].smtp_code),
        (Some(1), "transient", Some(450))
    );
    assert_eq!(a[0].enhanced_code.as_deref(), Some("4.0.0"));
    assert_eq!(a[0].checked_at, Some(4_990), "when the directory was read");

    // Three attempts on another delivery are numbered 1, 2, 3.
    let ids = event_with_deliveries(&store, "e-2", 1, 1).await;
    for (n, (outcome, t)) in [
        (
            AttemptOutcome::Unknown,
            Transition::Retry {
                due_ms: 1,
                retry_step: 1,
                error: "lost".into(),
                sent_to: None,
            },
        ),
        (
            AttemptOutcome::RelayFault,
            Transition::Retry {
                due_ms: 1,
                retry_step: 1,
                error: "5.7.1".into(),
                sent_to: None,
            },
        ),
        (
            AttemptOutcome::Permanent,
            Transition::Failed {
                error: "550".into(),
                sent_to: Some("u0@praktijk.example".into()),
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let c = claim(&store, "me", 10 + n as i64, 1, 1).await;
        assert_eq!(c[0].id, ids[0]);
        assert!(
            finish(
                &store,
                &ids[0],
                "me",
                Some(&attempt(outcome, Some(550))),
                &t
            )
            .await
        );
    }
    let a = dl::attempts(&mut conn, &ids[0]).await.unwrap();
    assert_eq!(
        a.iter().map(|a| a.n).collect::<Vec<_>>(),
        vec![Some(1), Some(2), Some(3)]
    );
    assert_eq!(
        a.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>(),
        vec!["unknown", "relay_fault", "permanent"]
    );
    let d = list(
        &store,
        DeliveryFilter {
            event_id: Some("e-2".into()),
            ..Default::default()
        },
    )
    .await
    .remove(0);
    assert_eq!(
        (d.status.as_str(), d.attempts, d.recipient.as_str()),
        ("failed", 3, "u0@praktijk.example")
    );
}

async fn a_group_of_finishes_is_recorded_together_and_fenced_per_delivery(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 6, 1).await;
    assert_eq!(claim(&store, "me", 10, 1_000, 5).await.len(), 5);
    // The sixth is someone else's: its finish in my group must not count.
    let theirs = claim(&store, "other", 10, 1_000, 1).await.remove(0);
    let sent = |i: usize| Transition::Sent {
        sent_to: format!("u{i}@praktijk.example"),
        at_ms: 7_000 + i as i64,
    };
    let group = vec![
        dl::Finish {
            delivery_id: ids[0].clone(),
            attempt: Some(attempt(AttemptOutcome::Sent, Some(250))),
            next: sent(0),
        },
        dl::Finish {
            delivery_id: ids[1].clone(),
            attempt: Some(AttemptRecord {
                policy_rejection: true,
                ..attempt(AttemptOutcome::Permanent, Some(550))
            }),
            next: Transition::Retry {
                due_ms: 9_000,
                retry_step: 1,
                error: "550 5.7.1 blocked\0here".into(),
                sent_to: Some("u1@praktijk.example".into()),
            },
        },
        dl::Finish {
            delivery_id: ids[2].clone(),
            attempt: None,
            next: Transition::Cancelled {
                reason: "revoked".into(),
            },
        },
        dl::Finish {
            delivery_id: ids[3].clone(),
            attempt: None,
            next: Transition::Released,
        },
        dl::Finish {
            delivery_id: theirs.id.clone(),
            attempt: Some(attempt(AttemptOutcome::Sent, Some(250))),
            next: sent(9),
        },
        dl::Finish {
            delivery_id: ids[4].clone(),
            attempt: Some(attempt(AttemptOutcome::Permanent, Some(550))),
            next: Transition::Failed {
                error: "550 no such user".into(),
                sent_to: Some("u4@praktijk.example".into()),
            },
        },
    ];
    let mut tx = store.begin().await.unwrap();
    let kept = dl::finish_many(&mut tx, "me", &group).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(kept, vec![true, true, true, true, false, true]);

    let rows = list(&store, DeliveryFilter::default()).await;
    let row = |id: &str| rows.iter().find(|d| d.id == id).unwrap().clone();
    let d0 = row(&ids[0]);
    assert_eq!(
        (d0.status.as_str(), d0.attempts, d0.sent_at, d0.last_error),
        ("sent", 1, Some(7_000), None)
    );
    let d1 = row(&ids[1]);
    assert_eq!(
        (d1.status.as_str(), d1.attempts, d1.due_at),
        ("pending", 1, 9_000)
    );
    assert_eq!(
        d1.last_error.as_deref(),
        Some("550 5.7.1 blocked\u{FFFD}here")
    );
    assert_eq!(row(&ids[2]).status, DeliveryStatus::Cancelled);
    let d3 = row(&ids[3]);
    assert_eq!(
        (d3.status.as_str(), d3.attempts),
        ("pending", 0),
        "released unsent"
    );
    assert_eq!(
        row(&theirs.id).status,
        DeliveryStatus::Sending,
        "another owner's lease holds"
    );
    assert_eq!(row(&ids[4]).status, DeliveryStatus::Failed);

    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(dl::attempts(&mut c, &ids[0]).await.unwrap().len(), 1);
    assert!(dl::attempts(&mut c, &ids[2]).await.unwrap().is_empty());
    assert!(
        dl::attempts(&mut c, &theirs.id).await.unwrap().is_empty(),
        "no attempt row without the lease"
    );
    drop(c);
    // The policy refusal counted: the next claim sees it, and the retry step.
    let again = claim(&store, "me", 9_000, 1_000, 10).await;
    let c1 = again.iter().find(|d| d.id == ids[1]).unwrap();
    assert_eq!(
        (c1.policy_rejections, c1.retry_step, c1.attempts),
        (1, 1, 1)
    );
    // A second group numbers its attempts on from the first.
    let mut tx = store.begin().await.unwrap();
    let kept = dl::finish_many(
        &mut tx,
        "me",
        &[dl::Finish {
            delivery_id: ids[1].clone(),
            attempt: Some(attempt(AttemptOutcome::Sent, Some(250))),
            next: sent(1),
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(kept, vec![true]);
    let mut c = store.pool().acquire().await.unwrap();
    let n: Vec<Option<i64>> = dl::attempts(&mut c, &ids[1])
        .await
        .unwrap()
        .iter()
        .map(|a| a.n)
        .collect();
    assert_eq!(n, vec![Some(1), Some(2)]);
}

async fn a_revocation_cancels_only_mails_without_another_active_user(store: Store) {
    add_users(&store, 3).await;
    add_event(&store, "e-1").await;
    let mut tx = store.begin().await.unwrap();
    let alone = plan(&mut tx, "e-1", &planned("u1@praktijk.example", &[1]), 1, 99).await;
    let shared = plan(
        &mut tx,
        "e-1",
        &planned("gedeeld@praktijk.example", &[1, 2]),
        1,
        99,
    )
    .await;
    let other = plan(&mut tx, "e-1", &planned("u0@praktijk.example", &[0]), 1, 99).await;
    assert_eq!(
        dir::revoke(&mut tx, &nr(1), 2, 5).await.unwrap(),
        UserChange::Applied
    );
    let n = dl::cancel_for_revoked(&mut tx, nr(1).as_str(), "cancelled: revoked")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(status_of(&store, &alone).await, DeliveryStatus::Cancelled);
    assert_eq!(
        status_of(&store, &shared).await,
        DeliveryStatus::Pending,
        "still serves an active user"
    );
    assert_eq!(status_of(&store, &other).await, DeliveryStatus::Pending);
}

/// A split at `now_ms` of a delivery whose deadline is 99.
fn split_at(now_ms: i64) -> plan::Timing {
    plan::Timing::due_now(
        notifier::store::from_ms(now_ms),
        plan::Deadline::Inherit(99),
    )
}

async fn split_off_moves_users_to_their_own_delivery(store: Store) {
    add_users(&store, 3).await;
    add_event(&store, "e-1").await;
    let mut tx = store.begin().await.unwrap();
    let from = plan(
        &mut tx,
        "e-1",
        &planned("gedeeld@praktijk.example", &[0, 1, 2]),
        1,
        99,
    )
    .await;
    plan::split_off(
        &mut tx,
        &from,
        "u1@praktijk.example",
        &[nr(1).as_str()],
        split_at(50),
    )
    .await
    .unwrap();
    // A second split to the same address joins the delivery made by the first.
    plan::split_off(
        &mut tx,
        &from,
        "u1@praktijk.example",
        &[nr(2).as_str()],
        split_at(60),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let rows = list(&store, DeliveryFilter::default()).await;
    assert_eq!(rows.len(), 2);
    let new = rows.iter().find(|d| d.id != from).unwrap();
    assert_eq!(
        (
            new.recipient.as_str(),
            new.status.as_str(),
            new.deadline,
            new.due_at
        ),
        ("u1@praktijk.example", "pending", 99, 50)
    );
    assert_eq!(new.message_id, dl::message_id_for(&new.id));
    let mut c = store.pool().acquire().await.unwrap();
    let users = |v: Vec<dl::ServedNow>| {
        v.into_iter()
            .map(|u| u.gebruikersnummer)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        users(dl::served_users(&mut c, &from).await.unwrap()),
        vec![nr(0).to_string()]
    );
    assert_eq!(
        users(dl::served_users(&mut c, &new.id).await.unwrap()),
        vec![nr(1).to_string(), nr(2).to_string()]
    );
    assert_eq!(
        dl::replay_conflict(&mut c, "e-1", MODULE, "u1@praktijk.example", "")
            .await
            .unwrap(),
        Some(dl::ReplayConflict::Exists(
            notifier::domain::delivery::DeliveryStatus::Pending
        )),
        "the split-off delivery has taken its address"
    );
    assert_eq!(
        dl::replay_conflict(&mut c, "e-1", MODULE, "elders@praktijk.example", "")
            .await
            .unwrap(),
        None
    );
}

async fn a_split_revives_the_cancelled_delivery_planned_for_the_address(store: Store) {
    add_users(&store, 3).await;
    add_event(&store, "e-1").await;
    let mut tx = store.begin().await.unwrap();
    let shared = planned("gedeeld@praktijk.example", &[0, 2]);
    let from = dl::insert_planned(&mut tx, "e-1", &shared, 1, 1, 99)
        .await
        .unwrap()
        .unwrap();
    let old = dl::insert_planned(
        &mut tx,
        "e-1",
        &planned("u1@praktijk.example", &[1]),
        1,
        1,
        99,
    )
    .await
    .unwrap()
    .unwrap();
    dir::revoke(&mut tx, &nr(1), 2, 5).await.unwrap();
    dl::cancel_for_revoked(&mut tx, nr(1).as_str(), "cancelled: revoked")
        .await
        .unwrap();
    // User 2 now has the address user 1 had.
    let to = plan::split_off(
        &mut tx,
        &from,
        "u1@praktijk.example",
        &[nr(2).as_str()],
        split_at(50),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(to.as_deref(), Some(old.as_str()), "revived, not a new row");
    let rows = list(&store, DeliveryFilter::default()).await;
    assert_eq!(rows.len(), 2);
    let revived = rows.iter().find(|d| d.id == old).unwrap();
    assert_eq!(
        (
            revived.status.as_str(),
            revived.due_at,
            revived.last_error.as_deref()
        ),
        ("pending", 50, None)
    );
    let mut c = store.pool().acquire().await.unwrap();
    let served = dl::served_users(&mut c, &old).await.unwrap();
    assert!(served.iter().any(|u| u.gebruikersnummer == nr(2).as_str()));
    let left = dl::served_users(&mut c, &from).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|u| u.gebruikersnummer.as_str())
            .collect::<Vec<_>>(),
        vec![nr(0).as_str()]
    );
}

async fn only_one_delivery_takes_an_address_even_when_racing(store: Store) {
    let ids = event_with_deliveries(&store, "e-1", 2, 1).await;
    assert_eq!(claim(&store, "me", 10, 60_000, 10).await.len(), 2);
    // Both users moved to one shared address; both deliveries re-check at once.
    let mut first = store.begin().await.unwrap();
    assert!(
        dl::claim_address(&mut first, &ids[0], "me", "gedeeld@praktijk.example")
            .await
            .unwrap()
    );
    let (s2, id2) = (store.clone(), ids[1].clone());
    let second = tokio::spawn(async move {
        let mut tx = s2.begin().await.unwrap();
        let won = dl::claim_address(&mut tx, &id2, "me", "gedeeld@praktijk.example")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        won
    });
    wait_for_lock_waiter(&store).await;
    first.commit().await.unwrap();
    assert!(
        !second.await.unwrap(),
        "the second delivery finds the address taken"
    );
    let mut c = store.pool().acquire().await.unwrap();
    // The address the first one left is free again; a cancelled delivery
    // gives its address back.
    assert!(
        dl::claim_address(&mut c, &ids[1], "me", "u0@praktijk.example")
            .await
            .unwrap()
    );
    drop(c);
    let cancelled = Transition::Cancelled {
        reason: "test".into(),
    };
    assert!(finish(&store, &ids[0], "me", None, &cancelled).await);
    let mut c = store.pool().acquire().await.unwrap();
    assert!(
        dl::claim_address(&mut c, &ids[1], "me", "gedeeld@praktijk.example")
            .await
            .unwrap()
    );
}

async fn listing_filters_by_event_status_agb_type_and_time(store: Store) {
    let mut a = event_with_deliveries(&store, "e-a", 2, 100).await;
    a.sort(); // same created_at: listed by id
    let mut c = store.pool().acquire().await.unwrap();
    ev::insert_event(
        &mut c,
        &NewEvent {
            id: "e-dir",
            event_type: "gebruiker.bijgewerkt",
            agb_code: None,
            ..new_event("e-dir")
        },
    )
    .await
    .unwrap();
    drop(c);
    let mut tx = store.begin().await.unwrap();
    let d = plan(
        &mut tx,
        "e-dir",
        &planned("u9@praktijk.example", &[]),
        300,
        999,
    )
    .await;
    tx.commit().await.unwrap();
    claim(&store, "me", 150, 1_000, 1).await;

    let all = list(&store, DeliveryFilter::default()).await;
    let ids = |rows: Vec<dl::DeliveryRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(all.clone()),
        vec![a[0].clone(), a[1].clone(), d.clone()],
        "oldest first"
    );
    let cases = [
        (
            "one event",
            DeliveryFilter {
                event_id: Some("e-dir".into()),
                ..Default::default()
            },
            vec![d.clone()],
        ),
        (
            "one AGB code",
            DeliveryFilter {
                agb_code: Some(AGB.into()),
                ..Default::default()
            },
            a.clone(),
        ),
        (
            "one event type",
            DeliveryFilter {
                event_type: Some("gebruiker.bijgewerkt".into()),
                ..Default::default()
            },
            vec![d.clone()],
        ),
        (
            "created since",
            DeliveryFilter {
                since_ms: Some(200),
                ..Default::default()
            },
            vec![d.clone()],
        ),
        (
            "created before",
            DeliveryFilter {
                until_ms: Some(200),
                ..Default::default()
            },
            a.clone(),
        ),
        (
            "a limit",
            DeliveryFilter {
                limit: Some(1),
                ..Default::default()
            },
            vec![a[0].clone()],
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(ids(list(&store, filter).await), want, "{what}");
    }
    // Which of `a` was claimed is the store's choice: count those.
    let counted = [
        (
            "being sent",
            DeliveryFilter {
                status: Some(DeliveryStatus::Sending),
                ..Default::default()
            },
        ),
        (
            "pending of one AGB code",
            DeliveryFilter {
                status: Some(DeliveryStatus::Pending),
                agb_code: Some(AGB.into()),
                ..Default::default()
            },
        ),
    ];
    for (what, filter) in counted {
        assert_eq!(list(&store, filter).await.len(), 1, "{what}");
    }
    let dir_row = all.iter().find(|r| r.id == d).unwrap();
    assert_eq!(
        (dir_row.agb_code.as_deref(), dir_row.event_type.as_str()),
        (None, "gebruiker.bijgewerkt")
    );
}

async fn pending_summary_counts_what_is_not_final(store: Store) {
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(dl::pending_summary(&mut c).await.unwrap(), (0, None));
    drop(c);
    let ids = event_with_deliveries(&store, "e-1", 3, 100).await;
    claim(&store, "me", 100, 1_000, 1).await;
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(dl::pending_summary(&mut c).await.unwrap(), (3, Some(100)));
    // Dispatch lag: nothing is overdue before the due time; after it, the oldest due time.
    assert_eq!(dl::oldest_overdue(&mut c, 50).await.unwrap(), None);
    assert_eq!(dl::oldest_overdue(&mut c, 500).await.unwrap(), Some(100));
    drop(c);
    let c1 = list(
        &store,
        DeliveryFilter {
            status: Some(DeliveryStatus::Sending),
            ..Default::default()
        },
    )
    .await;
    let sent = Transition::Sent {
        sent_to: "x@praktijk.example".into(),
        at_ms: 1,
    };
    assert!(finish(&store, &c1[0].id, "me", None, &sent).await);
    let mut c = store.pool().acquire().await.unwrap();
    assert_eq!(dl::pending_summary(&mut c).await.unwrap(), (2, Some(100)));
    assert_eq!(ids.len(), 3);
}

async fn a_recent_undeliverable_notice_is_found_by_user_and_time(store: Store) {
    add_event(&store, "e-1").await;
    let mut p = planned("cp@praktijk.example", &[]);
    p.kind = MailKind::Onbestelbaar;
    p.about = nr(1).to_string();
    p.notice = Some(serde_json::json!({"agb_code": AGB}));
    let mut tx = store.begin().await.unwrap();
    plan(&mut tx, "e-1", &p, 1_000, 99_000).await;
    tx.commit().await.unwrap();
    let mut c = store.pool().acquire().await.unwrap();
    assert!(
        dl::recent_undeliverable_notice(&mut c, nr(1).as_str(), AGB, 500)
            .await
            .unwrap()
    );
    assert!(
        !dl::recent_undeliverable_notice(&mut c, nr(1).as_str(), AGB, 1_001)
            .await
            .unwrap()
    );
    assert!(
        !dl::recent_undeliverable_notice(&mut c, nr(2).as_str(), AGB, 0)
            .await
            .unwrap()
    );
    assert!(
        !dl::recent_undeliverable_notice(&mut c, nr(1).as_str(), "04222222", 0)
            .await
            .unwrap(),
        "a notice for another practice does not count"
    );
    drop(c);
    let d = claim(&store, "me", 1_000, 1_000, 1).await.remove(0);
    assert_eq!(
        (d.kind_name(), d.about.as_str()),
        ("beheer.onbestelbaar", nr(1).as_str())
    );
    assert_eq!(d.notice.as_deref(), Some(r#"{"agb_code":"04111111"}"#));
}

/// An ingestor on `store` with the sample events' link host.
fn ingestor(store: &Store, late_window: std::time::Duration) -> Ingestor {
    Ingestor::new(
        store.clone(),
        ValidationRules {
            allowed_link_hosts: vec!["zip.example.nl".into()],
        },
        std::time::Duration::from_secs(3 * 24 * 3600),
        late_window,
        notifier::ops::metrics::Metrics::default(),
    )
}

fn incoming(event: &serde_json::Value) -> Incoming {
    Incoming::new(event.to_string().into_bytes(), None, Source::File)
}

/// What a delivery holds besides its id and times, with the users it serves.
type DeliveryView = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Vec<(String, i64, String)>,
);

/// Every delivery, in an order that does not depend on ids or times.
async fn deliveries_view(store: &Store) -> Vec<DeliveryView> {
    use sqlx::Row;
    let mut c = store.pool().acquire().await.unwrap();
    let users = sqlx::query(
        "SELECT delivery_id, gebruikersnummer, versie, rule FROM delivery_users ORDER BY gebruikersnummer",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();
    let mut by_delivery: std::collections::HashMap<String, Vec<(String, i64, String)>> =
        Default::default();
    for r in &users {
        by_delivery.entry(r.get("delivery_id")).or_default().push((
            r.get("gebruikersnummer"),
            r.get("versie"),
            r.get("rule"),
        ));
    }
    let rows = sqlx::query(
        "SELECT id, event_id, kind, about, address, status, rule, COALESCE(notice, '') AS notice, \
         COALESCE(last_error, '') AS last_error FROM deliveries",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();
    let mut v: Vec<DeliveryView> = rows
        .iter()
        .map(|r| {
            (
                r.get("event_id"),
                r.get("kind"),
                r.get("address"),
                r.get("about"),
                r.get("status"),
                r.get("rule"),
                r.get("notice"),
                r.get("last_error"),
                by_delivery
                    .remove(&r.get::<String, _>("id"))
                    .unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Every event's id, state and detail.
async fn events_view(store: &Store) -> Vec<(String, String, Option<String>)> {
    let mut c = store.pool().acquire().await.unwrap();
    sqlx::query_as("SELECT id, state, detail FROM events ORDER BY id")
        .fetch_all(&mut *c)
        .await
        .unwrap()
}

async fn in_one_multi_row_insert_the_first_of_two_rows_for_one_address_wins(store: Store) {
    add_users(&store, 3).await;
    add_event(&store, "e-1").await;
    let first = planned("u0@praktijk.example", &[0]);
    let same = planned("u0@praktijk.example", &[1]);
    let other = planned("u2@praktijk.example", &[2]);
    let mut tx = store.begin().await.unwrap();
    let ids = notifier::store::planning::insert_planned_many(
        &mut tx,
        "e-1",
        &[&first, &same, &other],
        1,
        1,
        99,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        ids[0].is_some() && ids[1].is_none() && ids[2].is_some(),
        "{ids:?}"
    );
    let mut c = store.pool().acquire().await.unwrap();
    let served = dl::served_users(&mut c, ids[0].as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        served
            .iter()
            .map(|u| u.gebruikersnummer.clone())
            .collect::<Vec<_>>(),
        vec![nr(0).to_string()],
        "the users of the row that lost are not recorded on the winner"
    );
    assert_eq!(list(&store, DeliveryFilter::default()).await.len(), 2);
}

async fn fan_out_to_5000_gives_5000_deliveries_each_with_its_user(store: Store) {
    use sqlx::Row;
    const N: u32 = 5_000;
    add_users(&store, N).await;
    let event = crate::support::fresh_for(MODULE, AGB);
    let id = event["id"].as_str().unwrap().to_owned();
    let out = ingestor(&store, std::time::Duration::ZERO)
        .ingest_batch(&[incoming(&event)])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![IngestOutcome::Accepted {
            event_id: id.clone(),
            deliveries: N as usize,
            routing: notifier::domain::recipients::Routing::Routed,
            unroutable_notice: false,
        }]
    );
    let mut c = store.pool().acquire().await.unwrap();
    let rows = sqlx::query(
        "SELECT d.id, d.address, d.claimed_address, d.status, d.rule, d.message_id, d.kind, d.about, \
         du.gebruikersnummer, du.versie, du.rule AS user_rule \
         FROM deliveries d LEFT JOIN delivery_users du ON du.delivery_id = d.id WHERE d.event_id = $1",
    )
    .bind(&id)
    .fetch_all(&mut *c)
    .await
    .unwrap();
    assert_eq!(rows.len(), N as usize, "one row per delivery and user");
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        let delivery: String = r.get("id");
        let address: String = r.get("address");
        let user: Option<String> = r.get("gebruikersnummer");
        let user = user.unwrap_or_else(|| panic!("delivery to {address} serves nobody"));
        let i: u32 = user[1..].parse().unwrap();
        assert_eq!(
            address,
            format!("u{i}@praktijk.example"),
            "each user at its own address"
        );
        assert_eq!(
            r.get::<Option<String>, _>("claimed_address").as_deref(),
            Some(address.as_str())
        );
        assert_eq!(r.get::<String, _>("status"), "pending");
        assert_eq!(r.get::<String, _>("kind"), MODULE);
        assert_eq!(r.get::<String, _>("about"), "");
        assert_eq!(r.get::<String, _>("rule"), "U(uitvragen)");
        assert_eq!(r.get::<String, _>("user_rule"), "U(uitvragen)");
        assert_eq!(r.get::<i64, _>("versie"), 1);
        assert_eq!(
            r.get::<String, _>("message_id"),
            dl::message_id_for(&delivery)
        );
        assert_eq!(
            uuid::Uuid::parse_str(&delivery).unwrap().get_version_num(),
            7
        );
        assert!(seen.insert(user), "a user served twice");
    }
    assert_eq!(seen.len(), N as usize);
    let ev = ev::get_event(&mut c, &id).await.unwrap().unwrap();
    assert_eq!(ev.state, notifier::domain::event::EventState::Accepted);
    // Ingesting it again adds nothing.
    drop(c);
    let again = ingestor(&store, std::time::Duration::ZERO)
        .ingest_batch(&[incoming(&event)])
        .await
        .unwrap();
    assert_eq!(again, vec![IngestOutcome::Duplicate { event_id: id }]);
    assert_eq!(deliveries_view(&store).await.len(), N as usize);
}

async fn snapshots_of_several_codes_read_at_once_match_one_by_one(store: Store) {
    let codes = ["04111111", "04222222", "04333333", "04999999"];
    let mut tx = store.begin().await.unwrap();
    for (i, agb) in codes.iter().take(3).enumerate() {
        for j in 0..3u32 {
            let n = i as u32 * 10 + j;
            let links: &[(&str, &[&str], bool, bool)] = if j == 0 {
                // Also linked to the next code: one user in two snapshots.
                &[
                    (agb, &["uitvragen"], true, true),
                    (codes[i + 1], &["naleving"], false, false),
                ]
            } else {
                &[(agb, &["contracteren"], false, false)]
            };
            let v = crate::support::user(
                &format!("3{n:013}"),
                &format!("u{n}@praktijk.example"),
                j != 2,
                links,
                1,
            );
            let u = parse_user_record(v.as_object().unwrap(), "").unwrap();
            dir::apply_user(&mut tx, &u, 1).await.unwrap();
        }
    }
    dir::apply_organisation(
        &mut tx,
        &AgbCode::parse("04222222").unwrap(),
        "Praktijk Twee",
        1,
        1,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut c = store.pool().acquire().await.unwrap();
    let agbs: Vec<AgbCode> = codes
        .iter()
        .chain(&["04111111"])
        .map(|a| AgbCode::parse(a).unwrap())
        .collect();
    let all = dir::agb_snapshots(&mut c, &agbs).await.unwrap();
    assert_eq!(all.len(), codes.len(), "one snapshot per distinct code");
    for agb in &agbs {
        let one = dir::agb_snapshot(&mut c, agb).await.unwrap();
        assert_eq!(all[agb], one);
    }
    assert_eq!(all[&agbs[1]].naam.as_deref(), Some("Praktijk Twee"));
    assert_eq!(all[&agbs[1]].members.len(), 4);
    assert!(all[&agbs[3]].members.len() == 1 && all[&agbs[3]].naam.is_none());
    let nrs = [nr(0), nr(12), nr(12), nr(999)];
    let users = dir::get_users(&mut c, &nrs).await.unwrap();
    assert_eq!(users.len(), 2, "known users once, unknown ones absent");
    assert_eq!(
        users[&nr(12)],
        dir::get_user(&mut c, &nr(12)).await.unwrap().unwrap()
    );
}

async fn a_mixed_batch_resolves_as_if_ingested_one_by_one(store: Store) {
    use crate::support::{fresh, fresh_for, user, user_event};
    let (a, b, c) = ("04500001", "04500002", "04500003");
    let (u1, u2, u3, u4, u5, u6) = (
        "50000000000001",
        "50000000000002",
        "50000000000003",
        "50000000000004",
        "50000000000005",
        "50000000000006",
    );
    let directory = [
        user(
            u1,
            "u1@a.example",
            true,
            &[(a, &["uitvragen", "contracteren"], true, true)],
            1,
        ),
        user(
            u2,
            "u2@b.example",
            true,
            &[
                (a, &["uitvragen"], false, false),
                (b, &["uitvragen", "contracteren"], true, false),
            ],
            1,
        ),
        user(
            u3,
            "u3@b.example",
            true,
            &[(b, &["onderhandelen"], false, true)],
            1,
        ),
        user(
            u4,
            "u4@c.example",
            true,
            &[(c, &["contracteren"], true, true)],
            1,
        ),
        user(
            u5,
            "u5@c.example",
            true,
            &[(c, &["uitvragen"], false, false)],
            1,
        ),
    ];
    let mut org = fresh("organisatie.bijgewerkt");
    org["data"]["agb_code"] = a.into();
    let mut revoke = fresh("certificaat.ingetrokken");
    revoke["data"]["gebruikersnummer"] = u2.into();
    revoke["data"]["ingetrokken_door"] = u1.into();
    revoke["data"]["versie"] = 2.into();
    let mut moved = fresh("gebruiker.emailadres_gewijzigd");
    moved["data"]["gebruikersnummer"] = u1.into();
    moved["data"]["oud_email"] = "u1@a.example".into();
    moved["data"]["nieuw_email"] = "u1@elders.example".into();
    moved["data"]["versie"] = 2.into();
    let mut accepted = fresh_for("contract.geaccepteerd", c);
    accepted["data"]["actor_gebruikersnummer"] = u5.into();
    let first_a = fresh_for(MODULE, a);
    let messages = [
        first_a.clone(),
        fresh_for("contract.voorstel_aangeboden", b),
        accepted.clone(),
        org,
        revoke,
        fresh_for(MODULE, a),
        fresh_for("contract.voorstel_aangeboden", b),
        user_event(user(
            u6,
            "u6@c.example",
            true,
            &[(c, &["contracteren"], false, false)],
            1,
        )),
        moved,
        fresh_for("uitvraag.beoordeeld", a),
        first_a.clone(),
        fresh_for("contract.geaccepteerd", c),
    ];
    let batch: Vec<Incoming> = messages.iter().map(incoming).collect();
    let window = std::time::Duration::from_secs(3600);

    let backend = match store.backend() {
        Backend::Sqlite => crate::support::TestBackend::Sqlite,
        Backend::Postgres => crate::support::TestBackend::Postgres,
    };
    let single_db = crate::support::TestDb::new(backend).await;
    let single = single_db.store().await;
    for s in [&store, &single] {
        let mut tx = s.begin().await.unwrap();
        for u in &directory {
            let rec = parse_user_record(u.as_object().unwrap(), "").unwrap();
            dir::apply_user(&mut tx, &rec, 1).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let together = ingestor(&store, window).ingest_batch(&batch).await.unwrap();
    let mut one_by_one = Vec::new();
    for m in &batch {
        let mut o = ingestor(&single, window)
            .ingest_batch(std::slice::from_ref(m))
            .await
            .unwrap();
        one_by_one.append(&mut o);
    }
    assert_eq!(together, one_by_one);
    assert_eq!(events_view(&store).await, events_view(&single).await);
    let view = deliveries_view(&store).await;
    assert_eq!(view, deliveries_view(&single).await);
    single.close().await;

    // And it is what the rules say, each event seeing the changes before it.
    let id = |e: &serde_json::Value| e["id"].as_str().unwrap().to_owned();
    let of = |e: &serde_json::Value| -> Vec<(String, String, String)> {
        let id = id(e);
        view.iter()
            .filter(|d| d.0 == id)
            .map(|d| (d.1.clone(), d.2.clone(), d.4.clone()))
            .collect()
    };
    let t = |k: &str, to: &str, st: &str| (k.to_owned(), to.to_owned(), st.to_owned());
    let cancelled = "cancelled";
    assert_eq!(
        of(&messages[0]),
        vec![
            t(MODULE, "u1@a.example", "pending"),
            t(MODULE, "u2@b.example", cancelled)
        ]
    );
    assert_eq!(
        of(&messages[1]),
        vec![t("contract.voorstel_aangeboden", "u2@b.example", cancelled)]
    );
    assert_eq!(
        of(&messages[5]),
        vec![t(MODULE, "u1@a.example", "pending")],
        "the revoked user is not chosen after the revocation"
    );
    assert!(
        of(&messages[6])
            .iter()
            .all(|d| d.0 != "contract.voorstel_aangeboden"),
        "no signer with the right in B any more: {:?}",
        of(&messages[6])
    );
    assert!(
        of(&messages[2]).contains(&t("contract.geaccepteerd", "u6@c.example", "pending")),
        "the user added later in the batch got the recent event of its AGB code"
    );
    assert!(of(&messages[9]).contains(&t("uitvraag.beoordeeld", "u1@elders.example", "pending")));
    assert_eq!(
        together[10],
        IngestOutcome::Duplicate {
            event_id: id(&first_a)
        }
    );
    let last = of(&messages[11]);
    // U5 has no right to contract mail: it had a copy only as the first event's actor.
    assert_eq!(
        last,
        vec![
            t("contract.geaccepteerd", "u4@c.example", "pending"),
            t("contract.geaccepteerd", "u6@c.example", "pending"),
        ]
    );
    assert!(of(&messages[2]).contains(&t("contract.geaccepteerd", "u5@c.example", "pending")));
}

async fn attempts_record_the_templates_that_rendered_them(store: Store) {
    use notifier::domain::delivery::LogOutcome;
    use notifier::store::bounces::{self as bx, ReportEntry};
    let ids = event_with_deliveries(&store, "e-t", 1, 1).await;
    // Not due while the other one is tried.
    let untried = event_with_deliveries(&store, "e-u", 1, 1_000_000).await;
    let dir = "/etc/notifier/templates-2026.11 \u{e9}";
    let retry = Transition::Retry {
        due_ms: 1,
        retry_step: 1,
        error: "450".into(),
        sent_to: None,
    };
    let sent = Transition::Sent {
        sent_to: "u0@praktijk.example".into(),
        at_ms: 3_000,
    };
    // Attempt 1 from the built-in templates, attempt 2 from a directory.
    for (at, (t, source, version)) in [
        (&retry, "builtin", "0123456789ab"),
        (&sent, dir, "ba9876543210"),
    ]
    .into_iter()
    .enumerate()
    {
        let c = claim(&store, "me", 10 + at as i64, 1, 1).await;
        assert_eq!(c[0].id, ids[0]);
        let a = AttemptRecord {
            template_source: Some(source.into()),
            template_version: Some(version.into()),
            ..attempt(AttemptOutcome::Transient, Some(450))
        };
        assert!(finish(&store, &ids[0], "me", Some(&a), t).await);
    }
    // A report read back rendered nothing.
    let mut tx = store.begin().await.unwrap();
    bx::add_report_entry(
        &mut tx,
        &ReportEntry {
            delivery_id: &ids[0],
            at_ms: 10_000,
            outcome: LogOutcome::Delayed,
            enhanced_code: Some("4.2.2"),
            smtp_code: None,
            detail: "4.2.2 full",
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut conn = store.pool().acquire().await.unwrap();
    let log = dl::attempts(&mut conn, &ids[0]).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|a| (
                a.n,
                a.template_source.as_deref(),
                a.template_version.as_deref()
            ))
            .collect::<Vec<_>>(),
        [
            (Some(1), Some("builtin"), Some("0123456789ab")),
            (Some(2), Some(dir), Some("ba9876543210")),
            (None, None, None),
        ]
    );
    drop(conn);
    // The list gives those of the last SMTP attempt, not of the report;
    // nothing for a delivery not tried yet.
    let rows = list(&store, DeliveryFilter::default()).await;
    let of = |id: &str| {
        let d = rows.iter().find(|d| d.id == id).unwrap();
        (d.template_source.as_deref(), d.template_version.as_deref())
    };
    assert_eq!(of(&ids[0]), (Some(dir), Some("ba9876543210")));
    assert_eq!(of(&untried[0]), (None, None));
}

// ---------------------------------------------------------------- bounces

async fn bounces_are_recorded_once_and_a_bounce_ends_only_a_sent_delivery(store: Store) {
    use notifier::domain::delivery::LogOutcome;
    use notifier::domain::dsn::BounceOutcome;
    use notifier::store::bounces::{self as bx, BounceFilter, NewBounce, ReportEntry};
    let ids = event_with_deliveries(&store, "e-b", 2, 1).await;
    let c = claim(&store, "me", 1, 1_000, 2).await;
    assert_eq!(c.len(), 2);
    let sent = Transition::Sent {
        sent_to: "u0@praktijk.example".into(),
        at_ms: 3_000,
    };
    assert!(
        finish(
            &store,
            &ids[0],
            "me",
            Some(&attempt(AttemptOutcome::Sent, Some(250))),
            &sent
        )
        .await
    );
    let raw = vec![b'x'; bx::MAX_RAW + 10];
    fn new<'a>(
        sha: &'a str,
        outcome: BounceOutcome,
        delivery: Option<&'a str>,
        raw: &'a [u8],
    ) -> NewBounce<'a> {
        NewBounce {
            received_at_ms: 10_000,
            sha256: sha,
            delivery_id: delivery,
            outcome,
            status: Some("5.1.1"),
            diagnostic: Some("550 5.1.1 unknown"),
            detail: "the delivery bounced",
            raw,
        }
    }
    let mut tx = store.begin().await.unwrap();
    let id0 = Some(ids[0].as_str());
    assert!(
        bx::insert(&mut tx, &new("aa", BounceOutcome::Hard, id0, &raw))
            .await
            .unwrap()
    );
    assert!(
        !bx::insert(&mut tx, &new("aa", BounceOutcome::Hard, id0, &raw))
            .await
            .unwrap(),
        "the same bytes once"
    );
    assert!(
        bx::insert(&mut tx, &new("bb", BounceOutcome::Forged, None, &raw))
            .await
            .unwrap()
    );
    let d = bx::tagged_delivery(&mut tx, &ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.status, d.address.as_str(), d.event_type.as_str()),
        (DeliveryStatus::Sent, "u0@praktijk.example", MODULE)
    );
    assert!(
        bx::tagged_delivery(&mut tx, "no-such-id")
            .await
            .unwrap()
            .is_none()
    );
    for id in &ids {
        bx::add_report_entry(
            &mut tx,
            &ReportEntry {
                delivery_id: id,
                at_ms: 10_000,
                outcome: LogOutcome::Bounced,
                enhanced_code: Some("5.1.1"),
                smtp_code: Some(550),
                detail: "5.1.1 550 unknown",
            },
        )
        .await
        .unwrap();
    }
    // A second entry without a number for the same delivery is allowed.
    bx::add_report_entry(
        &mut tx,
        &ReportEntry {
            delivery_id: &ids[0],
            at_ms: 11_000,
            outcome: LogOutcome::Delayed,
            enhanced_code: Some("4.2.2"),
            smtp_code: None,
            detail: "4.2.2 full",
        },
    )
    .await
    .unwrap();
    assert!(bx::mark_bounced(&mut tx, &ids[0], "5.1.1").await.unwrap());
    assert!(
        !bx::mark_bounced(&mut tx, &ids[0], "5.1.1").await.unwrap(),
        "bounced once"
    );
    assert!(
        !bx::mark_bounced(&mut tx, &ids[1], "5.1.1").await.unwrap(),
        "only a sent delivery bounces"
    );
    tx.commit().await.unwrap();

    assert_eq!(status_of(&store, &ids[0]).await, DeliveryStatus::Bounced);
    assert_eq!(status_of(&store, &ids[1]).await, DeliveryStatus::Sending);
    let bounced = list(
        &store,
        DeliveryFilter {
            status: Some(DeliveryStatus::Bounced),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(bounced.len(), 1);
    assert_eq!(bounced[0].attempts, 1, "a bounce is not an attempt");
    let mut conn = store.pool().acquire().await.unwrap();
    let log = dl::attempts(&mut conn, &ids[0]).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|a| (a.n, a.outcome.as_str()))
            .collect::<Vec<_>>(),
        [(Some(1), "sent"), (None, "bounced"), (None, "delayed")]
    );
    let all = bx::list(&mut conn, &BounceFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].size, raw.len() as i64);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT raw FROM bounces WHERE sha256 = 'aa'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(stored.len(), bx::MAX_RAW, "the raw message is bounded");
    let hard = bx::list(
        &mut conn,
        &BounceFilter {
            outcome: Some(BounceOutcome::Hard),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        hard.iter()
            .map(|b| b.delivery_id.as_deref())
            .collect::<Vec<_>>(),
        [Some(ids[0].as_str())]
    );
    let later = bx::list(
        &mut conn,
        &BounceFilter {
            since_ms: Some(10_001),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(later.is_empty());
    assert_eq!(
        bx::outcomes_since(&mut conn, 0).await.unwrap(),
        [("forged".to_owned(), 1), ("hard".to_owned(), 1)]
    );
    // Attempt counts and the relay's last attempt ignore the reports.
    assert_eq!(
        dl::attempt_outcomes(&mut conn, 0).await.unwrap(),
        [("sent".to_owned(), 1)]
    );
}

/// The retention purge, on a database with every kind of row: what is old
/// and finished loses its personal data, everything else is left whole,
/// and what the audit trail needs is kept.
async fn retention_purges_personal_data_of_old_finished_events_only(store: Store) {
    use notifier::domain::dsn::BounceOutcome;
    use notifier::pipeline::recovery::{self, Audit, DeliveriesReplay, Mode, Scope};
    use notifier::pipeline::retention::{self, PurgeOptions};
    use notifier::store::bounces::{self as bx, NewBounce};
    use sqlx::Row;

    // Times: old rows at 2_000 ms, the cut-off at 900_000, recent rows after it.
    const OLD: i64 = 2_000;
    const RECENT: i64 = 950_000;
    let now = notifier::store::from_ms(1_000_000);
    let keep = std::time::Duration::from_millis(100_000);
    add_users(&store, 3).await;
    let payload = |id: &str, text: &str| {
        serde_json::json!({
            "specversion": "1.0", "id": id, "type": MODULE, "source": "/zip",
            "time": "1970-01-01T00:00:01Z",
            "data": {"agb_code": AGB, "vragenlijst_id": "42", "vragenlijst_naam": text,
                     "toelichting": format!("{text} vraagt p.jansen@praktijk.example"),
                     "zorgverzekeraar": {"uzovi": "3311", "naam": "Verzekeraar"},
                     "url": "https://zip.example.nl/x"}
        })
        .to_string()
    };
    let insert = async |id: &str, received: i64, payload: String, detail: Option<&str>| {
        let mut c = store.pool().acquire().await.unwrap();
        let e = NewEvent {
            id,
            event_type: MODULE,
            agb_code: Some(AGB),
            occurred_at_ms: received - 1,
            received_at_ms: received,
            payload: &payload,
            state: notifier::domain::event::EventState::Accepted,
            detail,
        };
        assert!(ev::insert_event(&mut c, &e).await.unwrap());
    };
    // old-done: old, every delivery final: purged.
    insert(
        "old-done",
        OLD,
        payload("old-done", "Vragenlijst Zeldzaamnaam"),
        Some("actor 30000000000009 is revoked: no copy"),
    )
    .await;
    // old-pending: old, a delivery still pending: kept whole.
    insert(
        "old-pending",
        OLD,
        payload("old-pending", "Behouden A"),
        None,
    )
    .await;
    // recent-done: finished, but received after the cut-off: kept.
    insert(
        "recent-done",
        RECENT,
        payload("recent-done", "Behouden B"),
        None,
    )
    .await;
    // old-active: old, but attempted after the cut-off: kept.
    insert("old-active", OLD, payload("old-active", "Behouden C"), None).await;
    // old-directory: no deliveries at all (a directory event): purged.
    insert(
        "old-directory",
        OLD,
        serde_json::json!({"id": "old-directory", "type": "gebruiker.bijgewerkt",
            "data": {"gebruikersnummer": nr(1).as_str(), "naam": "Jan Zeldzaamnaam",
                     "email": "jan.zeldzaamnaam@praktijk.example", "versie": 3}})
        .to_string(),
        None,
    )
    .await;

    let mut tx = store.begin().await.unwrap();
    let mut notice = planned("u2@praktijk.example", &[2]);
    notice.kind = MailKind::Onbestelbaar;
    notice.rules = vec![Rule::Cp];
    notice.users[0].rule = Rule::Cp;
    notice.about = nr(1).as_str().to_owned();
    notice.notice = Some(serde_json::json!({
        "gebruiker_naam": "Gebruiker Zeldzaamnaam", "gebruikersnummer": nr(1).as_str(),
        "event_id": "old-done", "reden": "het adres werd door de ontvangende mailserver geweigerd"
    }));
    let mut done = Vec::new();
    for p in [
        planned("u0@praktijk.example", &[0]),
        planned("u1@praktijk.example", &[1]),
        notice,
    ] {
        done.push(plan(&mut tx, "old-done", &p, 3_000, 900_000).await);
    }
    let pending = plan(
        &mut tx,
        "old-pending",
        &planned("u0@praktijk.example", &[0]),
        i64::MAX / 4,
        i64::MAX / 4,
    )
    .await;
    let recent = plan(
        &mut tx,
        "recent-done",
        &planned("u0@praktijk.example", &[0]),
        3_000,
        900_000,
    )
    .await;
    let active = plan(
        &mut tx,
        "old-active",
        &planned("u1@praktijk.example", &[1]),
        3_000,
        900_000,
    )
    .await;
    tx.commit().await.unwrap();
    assert_eq!(claim(&store, "me", 3_000, 1_000_000, 10).await.len(), 5);
    let refused = "550 5.1.1 <u1@praktijk.example>: Recipient address rejected";
    let with_detail = |at: i64, outcome, code, detail: &str| AttemptRecord {
        started_at_ms: at,
        detail: detail.to_owned(),
        ..attempt(outcome, Some(code))
    };
    let sent = |to: &str| Transition::Sent {
        sent_to: to.to_owned(),
        at_ms: 5_000,
    };
    for (id, a, t) in [
        (
            &done[0],
            with_detail(5_000, AttemptOutcome::Sent, 250, "250 2.0.0 Ok: queued"),
            sent("U0@Praktijk.example"),
        ),
        (
            &done[1],
            with_detail(5_000, AttemptOutcome::Permanent, 550, refused),
            Transition::Failed {
                error: refused.into(),
                sent_to: Some("u1@praktijk.example".into()),
            },
        ),
        (
            &done[2],
            with_detail(5_000, AttemptOutcome::Sent, 250, "250 ok"),
            sent("u2@praktijk.example"),
        ),
        (
            &recent,
            with_detail(RECENT, AttemptOutcome::Sent, 250, "250 ok"),
            sent("u0@praktijk.example"),
        ),
        (
            &active,
            with_detail(RECENT, AttemptOutcome::Sent, 250, "250 ok"),
            sent("u1@praktijk.example"),
        ),
    ] {
        assert!(finish(&store, id, "me", Some(&a), &t).await);
    }
    assert_eq!(status_of(&store, &pending).await, DeliveryStatus::Pending);

    let mut tx = store.begin().await.unwrap();
    for (sha, at, raw) in [
        ("old", OLD, "From: Jan Zeldzaamnaam"),
        ("new", RECENT, "From: Behouden D"),
    ] {
        bx::insert(
            &mut tx,
            &NewBounce {
                received_at_ms: at,
                sha256: sha,
                delivery_id: Some(done[1].as_str()),
                outcome: BounceOutcome::Hard,
                status: Some("5.1.1"),
                diagnostic: Some(refused),
                detail: "the delivery is failed: unchanged",
                raw: raw.as_bytes(),
            },
        )
        .await
        .unwrap();
    }
    for (at, raw) in [
        (OLD, "{\"naam\": \"Jan Zeldzaamnaam\"}"),
        (RECENT, "{\"naam\": \"Behouden E\"}"),
    ] {
        ev::quarantine(
            &mut tx,
            &NewQuarantine {
                received_at_ms: at,
                source: "amqp",
                routing_key: Some(MODULE),
                event_id: Some("q"),
                event_type: Some(MODULE),
                reason: "data.email: jan@praktijk.example is not allowed",
                raw: raw.as_bytes(),
                size: raw.len(),
            },
        )
        .await
        .unwrap();
    }
    dir::log_skipped(&mut tx, "event", nr(1).as_str(), "stale", OLD)
        .await
        .unwrap();
    dir::log_skipped(&mut tx, "event", nr(2).as_str(), "stale", RECENT)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // A dry run counts and changes nothing.
    let audit = Mode::Execute(Audit {
        operator: "ops".into(),
        reason: "test".into(),
    });
    let opts = PurgeOptions {
        record_empty: true,
        ..Default::default()
    };
    let dry = retention::purge(&store, keep, "100s", &Mode::DryRun, &opts, now)
        .await
        .unwrap();
    let expected = notifier::store::retention::PurgeCounts {
        events: 2,
        deliveries: 3,
        delivery_users: 3,
        attempts: 3,
        bounces: 1,
        quarantine: 1,
        directory_log: 1,
    };
    assert_eq!(
        (dry.counts, dry.held_back, dry.replay_id),
        (expected, 2, None)
    );
    let mut c = store.pool().acquire().await.unwrap();
    assert!(
        ev::get_event(&mut c, "old-done")
            .await
            .unwrap()
            .unwrap()
            .payload
            .contains("Zeldzaamnaam")
    );
    // The address as registered (what RCPT TO carried) is personal data too.
    sqlx::query("UPDATE deliveries SET address_registered = 'Zeldzaamnaam@Praktijk.example' WHERE event_id = $1")
        .bind("old-done")
        .execute(&mut *c)
        .await
        .unwrap();
    drop(c);

    let done_report = retention::purge(&store, keep, "100s", &audit, &opts, now)
        .await
        .unwrap();
    assert_eq!((done_report.counts, done_report.held_back), (expected, 2));
    let files = done_report
        .files
        .expect("the files are settled after a purge");
    assert!(!files.ran.is_empty());

    // Nothing with the name is left anywhere: every table, every column.
    let mut export = Vec::new();
    notifier::store::transfer::export(&store, &mut export)
        .await
        .unwrap();
    let export = String::from_utf8(export).unwrap();
    assert!(
        !export.contains("Zeldzaamnaam"),
        "a purged name is left: {export}"
    );
    for kept in ["Behouden A", "Behouden B", "Behouden C"] {
        assert!(export.contains(kept), "{kept} was purged too");
    }

    let mut c = store.pool().acquire().await.unwrap();
    // The events: ids, types, codes, dates and numbers stay.
    let e = ev::get_event(&mut c, "old-done").await.unwrap().unwrap();
    assert_eq!(e.purged_at, Some(1_000_000));
    assert_eq!(e.state, notifier::domain::event::EventState::Accepted);
    assert_eq!(
        (e.event_type.as_str(), e.agb_code.as_deref(), e.received_at),
        (MODULE, Some(AGB), OLD)
    );
    let p: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(
        p["data"],
        serde_json::json!({"agb_code": AGB, "vragenlijst_id": "42", "zorgverzekeraar": {"uzovi": "3311"}})
    );
    assert_eq!(
        e.detail.as_deref(),
        Some("actor <number> is revoked: no copy")
    );
    let d = ev::get_event(&mut c, "old-directory")
        .await
        .unwrap()
        .unwrap();
    assert!(d.purged_at.is_some());
    assert!(
        !d.payload.contains(nr(1).as_str()) && !d.payload.contains('@'),
        "{}",
        d.payload
    );
    for kept in ["old-pending", "recent-done", "old-active"] {
        let k = ev::get_event(&mut c, kept).await.unwrap().unwrap();
        assert_eq!(k.purged_at, None, "{kept}");
        assert!(
            k.payload.contains("Behouden") && k.payload.contains("p.jansen@"),
            "{kept}"
        );
    }

    // The deliveries: no address, no user, no name; status, counts, codes and times stay.
    let rows = sqlx::query(
        "SELECT id, kind, address, sent_to, claimed_address, about, notice, status, attempts, rule, last_error, sent_at \
         FROM deliveries WHERE event_id = $1 ORDER BY id",
    )
    .bind("old-done")
    .fetch_all(&mut *c)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let id: String = r.get("id");
        assert_eq!(r.get::<String, _>("address"), format!("purged:{id}"));
        assert_eq!(r.get::<Option<String>, _>("sent_to"), None);
        assert_eq!(r.get::<Option<String>, _>("claimed_address"), None);
        assert_eq!(r.get::<String, _>("about"), "");
        assert_eq!(r.get::<i64, _>("attempts"), 1);
        let status: String = r.get("status");
        if id == done[1] {
            assert_eq!(status, "failed");
            assert_eq!(
                r.get::<Option<String>, _>("last_error").as_deref(),
                Some("550 5.1.1 <address> Recipient address rejected")
            );
        } else {
            assert_eq!(status, "sent");
            assert_eq!(r.get::<Option<i64>, _>("sent_at"), Some(5_000));
        }
        if id == done[2] {
            assert_eq!(r.get::<String, _>("kind"), "beheer.onbestelbaar");
            let n: serde_json::Value = serde_json::from_str(&r.get::<String, _>("notice")).unwrap();
            assert_eq!(
                n,
                serde_json::json!({"event_id": "old-done", "reden": "het adres werd door de ontvangende mailserver geweigerd"})
            );
        }
    }
    // The users served: as many as before, with their rules, numbered instead of named.
    let served = dl::served_users_of(&mut c, &done.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(served.values().map(Vec::len).sum::<usize>(), 3);
    for users in served.values() {
        assert_eq!(users[0].gebruikersnummer, "purged-1");
        assert_eq!(users[0].naam, None);
    }
    assert_eq!(served[&done[2]][0].rule, Rule::Cp);
    // The attempt log: outcomes and codes stay, the relay's text loses the address.
    let log = dl::attempts(&mut c, &done[1]).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].smtp_code, log[0].started_at), (Some(550), 5_000));
    assert_eq!(
        log[0].detail.as_deref(),
        Some("550 5.1.1 <address> Recipient address rejected")
    );
    // Listings say so.
    let listed = dl::list(
        &mut c,
        &DeliveryFilter {
            event_id: Some("old-done".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        listed
            .iter()
            .all(|d| d.purged && d.recipient == dl::PURGED_RECIPIENT)
    );
    let whole = dl::list(
        &mut c,
        &DeliveryFilter {
            event_id: Some("old-pending".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (whole[0].purged, whole[0].recipient.as_str()),
        (false, "u0@praktijk.example")
    );

    // Bounces and quarantine by their own time: the raw message goes.
    let b = sqlx::query(
        "SELECT sha256, raw, diagnostic, status, size, purged_at FROM bounces ORDER BY id",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap();
    assert_eq!(b[0].get::<Vec<u8>, _>("raw"), Vec::<u8>::new());
    assert_eq!(
        b[0].get::<Option<String>, _>("diagnostic").as_deref(),
        Some("550 5.1.1 <address> Recipient address rejected")
    );
    assert_eq!(
        (
            b[0].get::<Option<String>, _>("status").as_deref(),
            b[0].get::<i64, _>("size")
        ),
        (Some("5.1.1"), 22)
    );
    assert_eq!(b[0].get::<Option<i64>, _>("purged_at"), Some(1_000_000));
    assert_eq!(b[1].get::<Vec<u8>, _>("raw"), b"From: Behouden D");
    let q = ev::list_quarantine(&mut c, false, 10).await.unwrap();
    let (new_q, old_q) = (&q[0], &q[1]);
    assert_eq!(
        (old_q.raw.len(), old_q.size, old_q.purged_at),
        (0, 28, Some(1_000_000))
    );
    assert_eq!(old_q.reason, "data.email: <address> is not allowed");
    assert_eq!(new_q.purged_at, None);
    assert_eq!(
        ev::open_quarantine_count(&mut c).await.unwrap(),
        1,
        "a purged row cannot be redriven"
    );
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject FROM directory_log ORDER BY at")
        .fetch_all(&mut *c)
        .await
        .unwrap();
    assert_eq!(subjects, ["".to_owned(), nr(2).as_str().to_owned()]);

    // Recorded like a replay.
    let history = recovery::history(&store).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].command.as_str(), history[0].operator.as_str()),
        ("purge", "ops")
    );
    assert_eq!(history[0].counts["events"], 2);
    assert_eq!(history[0].counts["held_back"], 2);
    assert_eq!(history[0].filters["older_than"], "100s");
    drop(c);

    // A replay refuses what was purged.
    let replay = recovery::replay_deliveries(
        &store,
        &DeliveriesReplay {
            scope: Scope {
                event: Some("old-done".into()),
                ..Default::default()
            },
            status: DeliveryStatus::Failed,
            include_sent: false,
        },
        &audit,
        now,
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        (replay.matched, replay.refused_purged, replay.replayed),
        (0, 1, Some(0))
    );
    assert_eq!(status_of(&store, &done[1]).await, DeliveryStatus::Failed);
    let rules = ValidationRules {
        allowed_link_hosts: vec!["zip.example.nl".into()],
    };
    let again = recovery::replay_events(
        &store,
        &Scope::default(),
        &rules,
        &Mode::DryRun,
        now,
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        again.counts.refused_purged, 2,
        "old-done and old-directory (both stored as accepted module events here)"
    );

    // Purging again changes nothing.
    let twice = retention::purge(&store, keep, "100s", &audit, &opts, now)
        .await
        .unwrap();
    assert_eq!(
        (twice.counts.total(), twice.held_back, twice.files),
        (0, 2, None)
    );
    // `--vacuum`: the files are rewritten even when nothing was left to purge.
    let rewrite = PurgeOptions {
        rewrite_files: true,
        ..opts
    };
    let ran = retention::purge(&store, keep, "100s", &audit, &rewrite, now)
        .await
        .unwrap()
        .files
        .expect("the files are rewritten")
        .ran;
    let expected = match store.backend() {
        Backend::Sqlite => "VACUUM",
        Backend::Postgres => "VACUUM (FULL) events",
    };
    assert!(ran.iter().any(|r| r.starts_with(expected)), "{ran:?}");
}

/// Runs each listed contract test on SQLite and on PostgreSQL, each on a
/// fresh database that is removed afterwards.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::TestDb::new(crate::support::TestBackend::Sqlite).await;
                    let store = db.store().await;
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::TestDb::new(crate::support::TestBackend::Postgres).await;
                    let store = db.store().await;
                    assert_eq!(store.backend(), notifier::store::Backend::Postgres);
                    super::$name(store.clone()).await;
                    store.close().await;
                }
            )*
        }
    };
}

contract!(
    a_fresh_database_is_behind_until_migrated,
    text_from_outside_is_always_storable,
    data_errors_are_told_apart_from_other_errors,
    events_are_recorded_once_by_id,
    events_are_listed_by_state_type_and_agb_and_keep_their_notes,
    quarantine_keeps_bad_input_and_its_redrives,
    directory_applies_only_newer_versions,
    concurrent_directory_writes_never_overwrite_a_newer_version,
    address_changes_and_revocations_follow_the_versie_rule,
    addresses_are_kept_as_registered_next_to_the_compared_form,
    organisations_follow_the_versie_rule,
    planning_the_same_mail_twice_creates_one_delivery,
    concurrent_claimers_never_get_the_same_delivery,
    only_due_deliveries_are_claimed_oldest_due_first,
    an_expired_lease_is_claimable_again_and_the_old_holder_loses_it,
    released_leases_are_due_again_at_once,
    a_renewed_lease_holds_and_only_its_owner_renews_it,
    a_policy_refusal_is_counted_and_undone_once,
    attempts_are_numbered_and_retries_keep_their_step,
    a_group_of_finishes_is_recorded_together_and_fenced_per_delivery,
    attempts_record_the_templates_that_rendered_them,
    a_revocation_cancels_only_mails_without_another_active_user,
    split_off_moves_users_to_their_own_delivery,
    a_split_revives_the_cancelled_delivery_planned_for_the_address,
    only_one_delivery_takes_an_address_even_when_racing,
    listing_filters_by_event_status_agb_type_and_time,
    pending_summary_counts_what_is_not_final,
    a_recent_undeliverable_notice_is_found_by_user_and_time,
    in_one_multi_row_insert_the_first_of_two_rows_for_one_address_wins,
    fan_out_to_5000_gives_5000_deliveries_each_with_its_user,
    snapshots_of_several_codes_read_at_once_match_one_by_one,
    a_mixed_batch_resolves_as_if_ingested_one_by_one,
    bounces_are_recorded_once_and_a_bounce_ends_only_a_sent_delivery,
    retention_purges_personal_data_of_old_finished_events_only,
);
