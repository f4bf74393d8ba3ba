//! The scenarios, one test each. Sizes come from the tier: the short tier
//! (CI) first, the long tier (`FAULTS_TIER=long`) second.

use super::harness::{Fate, MailKey, Options, Scenario, by_tier};
use super::model;
use crate::support::TestBackend;
use std::collections::BTreeSet;
use std::time::Duration;

const S: TestBackend = TestBackend::Sqlite;
const PG: TestBackend = TestBackend::Postgres;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `kill -9` of the worker at random moments while the stream is consumed
/// and sent, restarted each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn kill9() {
    let mut s = Scenario::new("kill9", Options::new(S)).await;
    let (events, kills) = by_tier((2_000, 5), (10_000, 20));
    s.start_workers(1).await;
    let chunk = events / (kills + 1);
    for _ in 0..kills {
        s.publish_module_events(chunk).await;
        s.random_pause(secs(3)).await;
        s.kill9(0);
        s.start_workers(1).await;
    }
    s.publish_module_events(events - chunk * kills).await;
    s.end_fault();
    s.notes.push(format!("{kills} kills"));
    s.finish().await;
}

/// Three instances on one PostgreSQL database and one queue; two are
/// killed at random moments and stay down: their leases run out and the
/// survivor sends what they held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn three_instances_two_killed() {
    let mut s = Scenario::new("three_instances_two_killed", Options::new(PG)).await;
    let events = by_tier(1_500, 6_000);
    s.start_workers(3).await;
    s.publish_module_events(events / 3).await;
    s.random_pause(secs(2)).await;
    s.kill9(0);
    s.publish_module_events(events / 3).await;
    s.random_pause(secs(2)).await;
    s.kill9(1);
    s.end_fault();
    s.publish_module_events(events - 2 * (events / 3)).await;
    s.notes.push("lease 10s".into());
    s.finish().await;
}

/// The broker connection cut mid-stream (through a proxy) and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn broker_cut() {
    cut_mid_stream("broker_cut", Cut::Broker, by_tier(secs(3), secs(30))).await;
}

/// The database connection cut mid-stream (through a proxy) and restored:
/// batches stay unacked, recordings of finished sends are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn database_cut() {
    cut_mid_stream("database_cut", Cut::Database, by_tier(secs(5), secs(60))).await;
}

/// Which connection a cut scenario cuts.
enum Cut {
    Broker,
    Database,
}

/// Half the stream, a cut of `length` once 200 mails are out while the
/// other half is published, then the connection restored.
async fn cut_mid_stream(name: &str, cut: Cut, length: Duration) {
    let options = match cut {
        Cut::Broker => Options {
            amqp_proxy: true,
            ..Options::new(S)
        },
        Cut::Database => Options {
            db_proxy: true,
            ..Options::new(PG)
        },
    };
    let mut s = Scenario::new(name, options).await;
    let events = by_tier(1_000, 5_000);
    s.start_workers(1).await;
    s.publish_module_events(events / 2).await;
    s.wait_accepted(200, secs(60)).await;
    let proxy = s.amqp_proxy.take().or(s.db_proxy.take()).unwrap();
    proxy.cut();
    s.fault_now();
    s.publish_module_events(events / 2).await;
    tokio::time::sleep(length).await;
    proxy.restore();
    s.end_fault();
    s.notes.push(format!("cut {}s", length.as_secs()));
    s.finish().await;
    drop(proxy);
}

/// The relay answers 421 at MAIL for a while, then 451 at RCPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_421_then_451() {
    let mut s = Scenario::new("relay_421_then_451", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    s.start_workers(1).await;
    s.publish_module_events(events / 2).await;
    s.wait_accepted(100, secs(60)).await;
    s.smtp
        .reply_for_command("MAIL", "421 4.3.2 Service shutting down, try later");
    tokio::time::sleep(secs(3)).await;
    s.smtp.reset_script();
    s.smtp.reply_for_rcpt("@", "451 4.3.0 Temporary failure");
    s.publish_module_events(events / 2).await;
    tokio::time::sleep(secs(3)).await;
    s.smtp.reset_script();
    s.end_fault();
    s.finish().await;
}

/// Some recipients do not exist (550 5.1.1): their mails fail at once and
/// the practices' other contact persons get `beheer.onbestelbaar`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_550_some_recipients() {
    let mut s = Scenario::new("relay_550_some_recipients", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    let refused = refuse_some(&mut s, 12);
    for a in &refused {
        s.smtp.reply_for_rcpt(a, "550 5.1.1 User unknown");
    }
    s.start_workers(1).await;
    s.publish_module_events(events).await;
    s.end_fault();
    s.notes
        .push(format!("{} addresses refused for good", refused.len()));
    s.finish().await;
}

/// One recipient refused by policy (5.7.1): a few tries, then failed; the
/// relay is not taken for one that refuses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_571_one_recipient() {
    let mut s = Scenario::new("relay_571_one_recipient", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    let refused = refuse_some(&mut s, 1);
    s.smtp
        .reply_for_rcpt(&refused[0], "550 5.7.1 Message refused by policy");
    s.start_workers(1).await;
    s.publish_module_events(events).await;
    s.end_fault();
    s.finish().await;
}

/// The relay reads the data and drops the connection without a reply: the
/// attempt is `unknown`, the mail is sent again with the same Message-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_drops_after_data() {
    let mut s = Scenario::new("relay_drops_after_data", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    s.start_workers(1).await;
    s.publish_module_events(events).await;
    s.wait_accepted(50, secs(60)).await;
    s.smtp.drop_after_data_times(by_tier(30, 200));
    s.end_fault();
    s.finish().await;
}

/// The relay greets only after 8 s (longer than `smtp.timeout`) for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_stalls_after_greeting() {
    let mut s = Scenario::new("relay_stalls_after_greeting", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    s.start_workers(1).await;
    s.publish_module_events(events / 2).await;
    s.wait_accepted(50, secs(60)).await;
    s.smtp.stall_greeting(Some(secs(8)));
    s.fault_now();
    s.publish_module_events(events / 2).await;
    tokio::time::sleep(secs(6)).await;
    s.smtp.stall_greeting(None);
    s.end_fault();
    s.finish().await;
}

/// Two instances, a 3 s lease, and a relay that takes 5 s to answer the
/// data for a while: the lease is renewed, the other instance takes nothing
/// over, nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_slower_than_the_lease() {
    let mut s = Scenario::new(
        "relay_slower_than_the_lease",
        Options {
            extra: "[dispatch]\nlease = \"3s\"\n[smtp]\ntimeout = \"15s\"\n".into(),
            ..Options::new(PG)
        },
    )
    .await;
    let events = by_tier(300, 2_000);
    s.start_workers(2).await;
    s.publish_module_events(events / 2).await;
    s.wait_accepted(50, secs(60)).await;
    s.smtp.stall_after_data(Some(secs(5)));
    tokio::time::sleep(secs(12)).await;
    s.smtp.stall_after_data(None);
    s.publish_module_events(events / 2).await;
    s.end_fault();
    s.notes.push("lease 3s, data answered after 5s".into());
    s.finish().await;
}

/// The relay down (listener closed) for 1 minute (short) or 10 (long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn relay_down() {
    let mut s = Scenario::new("relay_down", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    let down = by_tier(secs(60), secs(600));
    s.start_workers(1).await;
    s.publish_module_events(events / 2).await;
    s.wait_accepted(50, secs(60)).await;
    s.smtp.stop_listening().await;
    s.fault_now();
    s.publish_module_events(events / 2).await;
    tokio::time::sleep(down).await;
    s.smtp.start_listening().await;
    s.end_fault();
    s.notes.push(format!("down {}s", down.as_secs()));
    s.finish().await;
}

/// Poison (unparseable or invalid events) among good ones: each goes to
/// quarantine with its reason, the good ones are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn poison_among_good() {
    let mut s = Scenario::new("poison_among_good", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    s.start_workers(1).await;
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("uitvraag.vragenlijst_klaargezet", b"{not json".to_vec()),
        ("naleving.aanleververzoek", b"[]".to_vec()),
        (
            "naleving.aanleververzoek",
            br#"{"specversion":"1.0"}"#.to_vec(),
        ),
    ];
    for i in 0..events {
        if i % 50 == 25 {
            let (rk, body) = &poison[(i / 50) % poison.len()];
            s.publish_raw(rk, body, None, Fate::Quarantine).await;
        }
        let e = s.next_module_event();
        s.publish_event(&e).await;
    }
    s.end_fault();
    s.finish().await;
}

/// A message whose processing never finishes (its ingest waits on a row
/// lock the suite holds) while the suite kills the worker again and again:
/// RabbitMQ's delivery limit dead-letters it and it ends in quarantine; the
/// messages that were in the same unacked batch are still sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn delivery_limit_dead_letters_one() {
    use sqlx::Connection;
    let mut s = Scenario::new(
        "delivery_limit_dead_letters_one",
        Options {
            extra: "[amqp]\ndelivery_limit = 3\n".into(),
            ..Options::new(PG)
        },
    )
    .await;
    // The stuck message: the suite inserts its event id first, in a
    // transaction it keeps open, so the worker's insert waits for it.
    let stuck = model::module_event("naleving.aanleververzoek", &s.directory.agbs[0].clone(), 0);
    let stuck_id = stuck["id"].as_str().unwrap().to_owned();
    let mut lock = sqlx::PgConnection::connect(s.settings.database.url.expose_secret())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query(
        "INSERT INTO events (id, type, occurred_at, received_at, state, payload) VALUES ($1, 'x', 0, 0, 'accepted', '{}')",
    )
    .bind(&stuck_id)
    .execute(&mut lock)
    .await
    .expect("the suite holds the event id");
    let before = by_tier(40, 100);
    s.publish_module_events(before).await;
    s.publish_raw(
        stuck["type"].as_str().unwrap(),
        stuck.to_string().as_bytes(),
        Some(&stuck_id),
        Fate::Quarantine,
    )
    .await;
    s.publish_module_events(before).await;
    // Kill whenever the worker waits on the lock, until the message is quarantined.
    let mut kills = 0;
    s.start_workers(1).await;
    for _ in 0..12 {
        let waiting = wait_for_lock_wait(s.settings.database.url.expose_secret(), secs(20)).await;
        if !waiting {
            break;
        }
        // At a random moment while the message is being processed.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        s.random_pause(secs(2)).await;
        s.kill9(0);
        // PostgreSQL keeps a dead client's backend waiting on the lock
        // until the lock goes: end it, as the server would on its next write.
        end_lock_waiters(s.settings.database.url.expose_secret()).await;
        kills += 1;
        s.start_workers(1).await;
    }
    s.end_fault();
    s.notes.push(format!("{kills} kills, delivery_limit 3"));
    let quarantined: Vec<(String,)> = wait_quarantined(&s, &stuck_id).await;
    match quarantined.first() {
        None => s
            .extra_failures
            .push("the stuck message never reached quarantine".into()),
        Some((reason,)) if !reason.contains("delivery limit") => s.extra_failures.push(format!(
            "the stuck message is quarantined for another reason: {reason}"
        )),
        Some(_) => {}
    }
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    s.finish().await;
}

async fn wait_for_lock_wait(url: &str, within: Duration) -> bool {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let db: String = url.rsplit('/').next().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&db)
        .fetch_one(&mut c)
        .await
        .unwrap();
        if n > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn end_lock_waiters(url: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let db: String = url.rsplit('/').next().unwrap().to_owned();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind(&db)
    .execute(&mut c)
    .await
    .unwrap();
}

async fn wait_quarantined(s: &Scenario, id: &str) -> Vec<(String,)> {
    let deadline = tokio::time::Instant::now() + secs(30);
    loop {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT reason FROM quarantine WHERE event_id = $1")
                .bind(id)
                .fetch_all(s.store.pool())
                .await
                .unwrap_or_default();
        if !rows.is_empty() || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hostile payloads among good events, and a relay reply with an absurd
/// retry hint: every bad message is quarantined with a reason, nothing
/// exits, the good events are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn hostile_payloads() {
    let mut s = Scenario::new(
        "hostile_payloads",
        Options {
            extra: "[retry]\ndeadline = \"20s\"\n".into(),
            ..Options::new(S)
        },
    )
    .await;
    s.start_workers(1).await;
    let good = by_tier(200, 1_000);
    let bad = hostile();
    let every = good / bad.len().max(1);
    let mut bad = bad.into_iter();
    // One recipient's relay asks for a retry in ~285,000 years, once.
    let absurd = refuse_some(&mut s, 1);
    s.refused.clear();
    s.smtp.reply_for_rcpt_times(
        &absurd[0],
        "451 4.7.1 Service busy, try again in 9000000000000 seconds",
        1,
    );
    for i in 0..good {
        if i % every == 0
            && let Some((rk, body)) = bad.next()
        {
            s.publish_raw(&rk, &body, None, Fate::Quarantine).await;
        }
        let e = s.next_module_event();
        s.publish_event(&e).await;
    }
    for (rk, body) in bad {
        s.publish_raw(&rk, &body, None, Fate::Quarantine).await;
    }
    // A NUL in the routing key: the type in the body decides, the key is
    // only kept with quarantined messages; this valid event is sent.
    let e = s.next_module_event();
    let id = e["id"].as_str().unwrap().to_owned();
    let rk = format!("{}\u{0}", e["type"].as_str().unwrap());
    s.publish_raw(&rk, e.to_string().as_bytes(), Some(&id), Fate::Event)
        .await;
    // CRLF and markup in every text field: accepted, rendered inert.
    let hostile_text = "Naam\r\nBcc: x@evil.example\r\n<script>alert(1)</script><a href=\"https://evil.example\">hier</a>";
    for _ in 0..5 {
        let agb = s.directory.agbs[s.rng.below(s.directory.agbs.len() as u64 - 1) as usize].clone();
        let mut e = model::module_event("uitvraag.aanvulling_gevraagd", &agb, 0);
        for f in ["vragenlijst_naam", "toelichting"] {
            e["data"][f] = hostile_text.into();
        }
        e["data"]["zorgverzekeraar"]["naam"] = hostile_text.into();
        s.expect_event(&e);
        s.publish_event(&e).await;
    }
    s.end_fault();
    s.notes
        .push("40 MB body, deadline 20s for the absurd hint".into());
    s.finish().await;
}

/// The hostile messages: (routing key, body).
fn hostile() -> Vec<(String, Vec<u8>)> {
    let base = model::module_event("uitvraag.aanvulling_gevraagd", "90000001", 0);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut e = base.clone();
        e["id"] = uuid::Uuid::new_v4().to_string().into();
        f(&mut e);
        (
            "uitvraag.aanvulling_gevraagd".to_owned(),
            e.to_string().into_bytes(),
        )
    };
    let mut out = vec![
        ("uitvraag.aanvulling_gevraagd".to_owned(), {
            let mut b = base.to_string().into_bytes();
            b.insert(10, 0xff);
            b
        }),
        with(&|e| e["data"]["toelichting"] = "nul \u{0} byte".into()),
        with(&|e| e["data"]["agb_code"] = "1234567".into()),
        with(&|e| e["data"]["agb_code"] = "123456789".into()),
        with(&|e| e["data"]["url"] = "http://portaal.example/x".into()),
        with(&|e| e["data"]["url"] = "https://evil.example/login".into()),
        with(&|e| e["type"] = "uitvraag.bestaat_niet".into()),
        with(&|e| e["specversion"] = "2.0".into()),
        ("uitvraag.aanvulling_gevraagd".to_owned(), {
            let mut b = "[".repeat(10_000);
            b.push_str(&"]".repeat(10_000));
            b.into_bytes()
        }),
        ("uitvraag.aanvulling_gevraagd".to_owned(), {
            let mut e = base.clone();
            e["id"] = uuid::Uuid::new_v4().to_string().into();
            e["data"]["toelichting"] = "x".repeat(40 * 1024 * 1024).into();
            e.to_string().into_bytes()
        }),
    ];
    // NUL in every string field of the envelope and the data.
    for field in [
        "id",
        "source",
        "type",
        "specversion",
        "time",
        "datacontenttype",
    ] {
        out.push(with(&|e| {
            let v = e[field].as_str().unwrap_or("x").to_owned();
            e[field] = format!("{v}\u{0}").into();
        }));
    }
    let data_fields: Vec<String> = base["data"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.is_string())
        .map(|(k, _)| k.clone())
        .collect();
    out.push(with(&|e| {
        let v = e["data"]["zorgverzekeraar"]["naam"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        e["data"]["zorgverzekeraar"]["naam"] = format!("{v}\u{0}").into();
    }));
    for field in data_fields {
        out.push(with(&|e| {
            let v = e["data"][&field].as_str().unwrap().to_owned();
            e["data"][&field] = format!("{v}\u{0}").into();
        }));
    }
    out
}

/// Every event published 1-3 times, in shuffled order; directory updates
/// arrive newest first (the older one must be ignored as stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn duplicated_and_reordered() {
    let mut s = Scenario::new("duplicated_and_reordered", Options::new(S)).await;
    let events = by_tier(500, 3_000);
    s.start_workers(1).await;
    // Directory: versie 3 (all rights) before versie 2 (none).
    let changed: Vec<String> = (0..20)
        .map(|i| s.directory.users[i * 7].nr.clone())
        .collect();
    for nr in &changed {
        let mut v3 = s.directory.user_mut(nr).clone();
        v3.versie = 3;
        for l in &mut v3.links {
            l.rights = model::RIGHTS.to_vec();
        }
        let mut v2 = v3.clone();
        v2.versie = 2;
        for l in &mut v2.links {
            l.rights.clear();
        }
        for u in [&v3, &v2] {
            let e = crate::support::user_event(u.data());
            s.publish_event(&e).await;
        }
        *s.directory.user_mut(nr) = v3;
    }
    s.wait_recorded(changed.len() * 2, secs(60)).await;
    let mut stream = Vec::new();
    for _ in 0..events {
        let e = s.next_module_event();
        let copies = 1 + s.rng.below(3) as usize;
        for _ in 0..copies {
            stream.push(e.clone());
        }
    }
    for i in (1..stream.len()).rev() {
        let j = s.rng.below(i as u64 + 1) as usize;
        stream.swap(i, j);
    }
    for e in &stream {
        s.publish_event(e).await;
    }
    s.end_fault();
    s.notes.push(format!("{} messages", stream.len()));
    s.finish().await;
}

/// Directory changes racing the module events they affect: rights changes,
/// revocations and address changes published right after events for the
/// same practices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite: run by tests/faults/run"]
async fn directory_races() {
    let mut s = Scenario::new("directory_races", Options::new(S)).await;
    let rounds = by_tier(150, 600);
    s.start_workers(1).await;
    let mut earlier: Vec<(String, String, String)> = Vec::new();
    for round in 0..rounds {
        let e = s.next_module_event();
        let agb = e["data"]["agb_code"].as_str().unwrap().to_owned();
        let t = e["type"].as_str().unwrap().to_owned();
        let id = e["id"].as_str().unwrap().to_owned();
        let before = s.directory.clone();
        let members: Vec<String> = before
            .users
            .iter()
            .filter(|u| u.active && u.links.iter().any(|l| l.agb == agb))
            .map(|u| u.nr.clone())
            .collect();
        s.publish_event(&e).await;
        earlier.push((id.clone(), t.clone(), agb.clone()));
        let Some(nr) = members
            .get(s.rng.below(members.len().max(1) as u64) as usize)
            .cloned()
        else {
            continue;
        };
        let user = s.directory.user_mut(&nr).clone();
        let old_addr = user.email.to_lowercase();
        let race = match round % 3 {
            0 => {
                // Rights change: the user loses or gains every right here.
                let mut u = user.clone();
                u.versie += 1;
                for l in &mut u.links {
                    l.rights = if l.rights.is_empty() {
                        model::RIGHTS.to_vec()
                    } else {
                        vec![]
                    };
                }
                *s.directory.user_mut(&nr) = u.clone();
                late_directory_data(&mut s, &u, &earlier);
                crate::support::user_event(u.data())
            }
            1 => revoke(&mut s, &before, &user),
            _ => change_address(&mut s, &user, round),
        };
        s.publish_event(&race).await;
        if round % 3 == 1 {
            watch_revocation(&mut s, &nr).await;
        }
        // Mails of earlier events to this user may still be pending: they
        // follow the directory (dropped, or sent to the new address).
        let new_addr = s.directory.user_mut(&nr).email.to_lowercase();
        loosen(
            &mut s,
            &old_addr,
            (new_addr != old_addr).then_some(new_addr.as_str()),
            &id,
        );
        // The raced module event: either directory is right for the user
        // in the race, the rest of the practice must get its mail.
        s.required.retain(|k| k.0 != id);
        let b: BTreeSet<(String, String)> =
            model::mails_for(&before, &t, &agb).into_iter().collect();
        let a: BTreeSet<(String, String)> = model::mails_for(&s.directory, &t, &agb)
            .into_iter()
            .collect();
        let key = |(k, addr): &(String, String)| (id.clone(), k.clone(), addr.clone());
        let old = user.email.to_lowercase();
        let new = s.directory.user_mut(&nr).email.to_lowercase();
        for m in b.intersection(&a) {
            s.required.insert(key(m));
        }
        for m in b.symmetric_difference(&a) {
            s.allowed.insert(key(m));
        }
        if old != new {
            // Sent to the old address before the change, or to the new one after.
            for (k, addr) in b.iter().filter(|m| m.1 == old) {
                if a.contains(&(k.clone(), new.clone())) {
                    let g: BTreeSet<_> = [
                        (id.clone(), k.clone(), old.clone()),
                        (id.clone(), k.clone(), new.clone()),
                    ]
                    .into();
                    s.allowed.remove(&(id.clone(), k.clone(), addr.clone()));
                    s.allowed.remove(&(id.clone(), k.clone(), new.clone()));
                    s.one_of.push(g);
                }
            }
        }
    }
    s.end_fault();
    s.finish().await;
}

/// docs/recipients.md, "Events that arrive before the directory knows the
/// user": an update of an active user resolves the recent events of its
/// practices again. A user who gained a right may get their mails, a
/// pending `beheer.geen_ontvanger` of such an event may be cancelled, and
/// an event left without a live module mail may raise a notice.
fn late_directory_data(s: &mut Scenario, u: &model::User, earlier: &[(String, String, String)]) {
    if !u.active {
        return;
    }
    let addr = u.email.to_lowercase();
    for (id, t, agb) in earlier {
        let Some(link) = u.links.iter().find(|l| &l.agb == agb) else {
            continue;
        };
        // An event whose module mails were all cancelled meanwhile (its
        // recipients revoked) finds no recipient now: the contact persons
        // may hear so, at their current addresses.
        for cp in s.directory.cp(agb) {
            for notice in ["beheer.geen_ontvanger", "beheer.geen_tekenbevoegde"] {
                s.allowed.insert((id.clone(), notice.into(), cp.clone()));
            }
        }
        if model::rights_for(t).iter().any(|r| link.rights.contains(r)) {
            s.allowed.insert((id.clone(), t.clone(), addr.clone()));
            relax(s, |k| &k.0 == id && k.1 == "beheer.geen_ontvanger");
        }
    }
}

/// Mails matching `pred` may be sent or not: out of `required` and out of
/// the one-of groups, into `allowed`.
fn relax(s: &mut Scenario, pred: impl Fn(&MailKey) -> bool) {
    let hit: Vec<MailKey> = s.required.iter().filter(|k| pred(k)).cloned().collect();
    for k in hit {
        s.required.remove(&k);
        s.allowed.insert(k);
    }
    let (dissolved, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut s.one_of)
        .into_iter()
        .partition(|g| g.iter().any(&pred));
    s.one_of = kept;
    for g in dissolved {
        s.allowed.extend(g);
    }
}

/// Earlier mails to `old` are no longer required: with `new`, one of the
/// two addresses must get each; without, they may be dropped.
fn loosen(s: &mut Scenario, old: &str, new: Option<&str>, except_event: &str) {
    // Only the security notice goes to a literal address; every other
    // mail follows its users.
    let follows = |k: &MailKey| k.2 == old && k.0 != except_event && !k.1.ends_with(".oud_adres");
    if let Some(n) = new {
        for g in &mut s.one_of {
            if g.iter().any(follows) {
                let extra: Vec<MailKey> = g
                    .iter()
                    .map(|k| (k.0.clone(), k.1.clone(), n.to_owned()))
                    .collect();
                g.extend(extra);
            }
        }
    }
    if let Some(n) = new {
        let moved: Vec<MailKey> = s
            .allowed
            .iter()
            .filter(|k| follows(k))
            .map(|k| (k.0.clone(), k.1.clone(), n.to_owned()))
            .collect();
        s.allowed.extend(moved);
    }
    let Some(n) = new else {
        relax(s, follows);
        return;
    };
    let hit: Vec<_> = s.required.iter().filter(|k| follows(k)).cloned().collect();
    for k in hit {
        s.required.remove(&k);
        let other = (k.0.clone(), k.1.clone(), n.to_owned());
        s.one_of.push([k, other].into());
    }
}

/// A `certificaat.ingetrokken` for `user`: its confirmation to the contact
/// persons, the last-signer warning where it applies, and the user's
/// address on the revoked list (unless another active user shares it).
fn revoke(s: &mut Scenario, before: &model::Directory, user: &model::User) -> serde_json::Value {
    let mut e = crate::support::fresh("certificaat.ingetrokken");
    e["data"] = serde_json::json!({"gebruikersnummer": user.nr, "versie": user.versie + 1});
    let id = e["id"].as_str().unwrap().to_owned();
    {
        let u = s.directory.user_mut(&user.nr);
        u.active = false;
        u.versie += 1;
    }
    for l in &user.links {
        for cp in s.directory.cp(&l.agb) {
            s.required
                .insert((id.clone(), "certificaat.ingetrokken".into(), cp.clone()));
            if before.t(&l.agb).contains(&user.email.to_lowercase())
                && s.directory.t(&l.agb).is_empty()
            {
                s.required.insert((
                    id.clone(),
                    "beheer.laatste_tekenbevoegde_ingetrokken".into(),
                    cp,
                ));
            }
        }
    }
    let addr = user.email.to_lowercase();
    let shared = s
        .directory
        .users
        .iter()
        .any(|u| u.active && u.email.to_lowercase() == addr);
    if !shared {
        s.revoked.push((addr, i64::MAX));
    }
    e
}

/// Waits until the revocation of `nr` is committed and notes the moment on
/// the last entry of the revoked list (if its address is not shared).
async fn watch_revocation(s: &mut Scenario, nr: &str) {
    let deadline = tokio::time::Instant::now() + secs(30);
    loop {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT status FROM users WHERE gebruikersnummer = $1")
                .bind(nr)
                .fetch_optional(s.store.pool())
                .await
                .unwrap_or(None);
        if row.is_some_and(|(st,)| st == "ingetrokken") {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            s.extra_failures
                .push(format!("revocation of {nr} not committed within 30 s"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    if let Some(last) = s.revoked.last_mut()
        && last.1 == i64::MAX
    {
        last.1 = now;
    }
}

/// A `gebruiker.emailadres_gewijzigd` for `user`: the confirmation to the
/// new address and the security notice to the old one.
fn change_address(s: &mut Scenario, user: &model::User, n: usize) -> serde_json::Value {
    let new = format!("nieuw{n}.{}@p{}.example", user.nr, &user.nr[..8]);
    let mut e = crate::support::fresh("gebruiker.emailadres_gewijzigd");
    e["data"] = serde_json::json!({
        "gebruikersnummer": user.nr, "oud_email": user.email,
        "nieuw_email": new, "versie": user.versie + 1,
    });
    let id = e["id"].as_str().unwrap().to_owned();
    s.required.insert((
        id.clone(),
        "gebruiker.emailadres_gewijzigd".into(),
        new.to_lowercase(),
    ));
    s.required.insert((
        id,
        "gebruiker.emailadres_gewijzigd.oud_adres".into(),
        user.email.to_lowercase(),
    ));
    let u = s.directory.user_mut(&user.nr);
    u.email = new;
    u.versie += 1;
    e
}

/// Picks `n` addresses of active, non-contact-person users that no one
/// else shares, marks them refused, and returns them.
fn refuse_some(s: &mut Scenario, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for u in &s.directory.users {
        if out.len() == n {
            break;
        }
        let addr = u.email.to_lowercase();
        let shared = s
            .directory
            .users
            .iter()
            .filter(|v| v.email.to_lowercase() == addr)
            .count()
            > 1;
        if u.active
            && !shared
            && u.links.iter().all(|l| !l.contactpersoon)
            && !addr.starts_with("probe")
        {
            out.push(addr);
        }
    }
    for a in &out {
        s.refused.insert(a.clone());
    }
    out
}
