//! Several `notifier run` processes (the real binary) on one PostgreSQL
//! database and one queue: competing consumers, disjoint claims, a `kill -9`
//! in the middle, and nothing lost or sent twice (except a send that was in
//! flight at the kill, with the same Message-ID).

use crate::support::{
    Deployment, RunProcess, TestBackend, TestDb, event_for, many_users, parse_mail, spawn_app_with,
    wait_all_deliveries,
};
use notifier::broker::publisher::Publisher;
use notifier::domain::delivery::DeliveryStatus;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Sends in flight per instance: also the bound on duplicates from one kill.
const CONCURRENCY: usize = 4;

/// A small practice (`04666666`, three users numbered apart from [`many_users`]).
fn small_practice() -> String {
    (0..3)
        .map(|i| {
            serde_json::json!({
                "gebruikersnummer": format!("4{i:013}"),
                "naam": format!("Klein {i}"),
                "email": format!("klein{i}@praktijk04666666.example"),
                "status": "actief",
                "koppelingen": [{"agb_code": "04666666", "rechten": ["uitvragen"],
                                 "tekenbevoegd": false, "contactpersoon": i == 0}],
                "versie": 1
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `notifier_events_received_total{…outcome="accepted"…}` summed over types.
fn accepted_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("notifier_events_received_total") && l.contains("outcome=\"accepted\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_send_each_delivery_once_and_survive_a_kill_9() {
    let deployment = Deployment::new(TestBackend::Postgres).await;
    let (smtp, s) = (&deployment.smtp, &deployment.settings);
    let store = deployment.store().await;
    let users = format!("{}\n{}", many_users("03777777", 1000), small_practice());
    crate::support::import_directory(&store, &users).await;

    let concurrency = CONCURRENCY.to_string();
    let env = [
        ("NOTIFIER_SMTP__CONCURRENCY", concurrency.as_str()),
        // Short leases so the killed instance's claims come back within the test.
        ("NOTIFIER_DISPATCH__LEASE", "3s"),
        ("NOTIFIER_DISPATCH__BATCH_SIZE", "25"),
        ("NOTIFIER_AMQP__PREFETCH", "10"),
    ];
    let mut instances: Vec<RunProcess> = (0..3)
        .map(|i| deployment.spawn(&format!("instance-{i}"), &env))
        .collect();
    for p in &mut instances {
        p.wait_consuming().await;
    }

    // Competing consumers: events published while all three consume. Each
    // small event is published twice (as a redelivery would be): ingest on
    // several instances at once must still record it once.
    let publisher = Publisher::connect(crate::support::AMQP_URL, &s.amqp.exchange)
        .await
        .unwrap();
    let mut event_ids = Vec::new();
    let publish = async |e: &serde_json::Value| {
        publisher
            .publish(
                e["type"].as_str().unwrap(),
                e["id"].as_str(),
                e.to_string().as_bytes(),
            )
            .await
            .unwrap();
    };
    for _ in 0..30 {
        let e = event_for("04666666");
        publish(&e).await;
        publish(&e).await;
        event_ids.push(e["id"].as_str().unwrap().to_owned());
    }
    // The load: three events for 1,000 users each.
    for _ in 0..3 {
        let e = event_for("03777777");
        publish(&e).await;
        event_ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let expected = 30 * 3 + 3 * 1000;

    let started = Instant::now();
    wait_all_deliveries(
        &store,
        Duration::from_secs(60),
        "every event ingested",
        |r| r.len() == expected,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let per_instance = loop {
        let mut counts = Vec::new();
        for p in &instances {
            counts.push(accepted_count(&p.metrics().await));
        }
        if counts.iter().sum::<u64>() == 33 {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instances report {counts:?} accepted events, expected 33 in total"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        per_instance.iter().filter(|n| **n > 0).count() >= 2,
        "events spread over the instances: {per_instance:?}"
    );

    // kill -9 one instance while all three are sending.
    let before_kill = smtp.count();
    smtp.wait_for_count(before_kill + 900, Duration::from_secs(120))
        .await
        .unwrap();
    let (at_kill, kill_time) = (smtp.count(), started.elapsed());
    instances[0].kill9();
    assert!(at_kill < expected, "killed mid-way ({at_kill} sent)");

    let rows = wait_all_deliveries(
        &store,
        Duration::from_secs(180),
        "every delivery sent",
        |r| r.iter().all(|d| d.status == DeliveryStatus::Sent),
    )
    .await;
    let total_time = started.elapsed();
    assert_eq!(rows.len(), expected, "nothing planned twice");

    // Events: each once in the events table, however often it was delivered.
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(events, 33, "each event ingested once");
    for id in &event_ids {
        assert!(
            rows.iter().any(|d| &d.event_id == id),
            "event {id} has deliveries"
        );
    }

    // Mails: each delivery's Message-ID arrived once, or twice only for a send
    // in flight at the kill.
    let mails = smtp.messages();
    let mut per_message: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &mails {
        per_message
            .entry(parse_mail(m).message_id)
            .or_default()
            .push(m.rcpt_to[0].clone());
    }
    for d in &rows {
        let got = per_message
            .get(&d.message_id)
            .unwrap_or_else(|| panic!("delivery {} marked sent but never arrived", d.id));
        assert!(
            got.iter().all(|to| *to == d.recipient),
            "{d:?} went to {got:?}"
        );
    }
    assert_eq!(per_message.len(), expected, "no unknown Message-IDs");
    let duplicated = per_message.values().filter(|v| v.len() > 1).count();
    assert!(
        per_message.values().all(|v| v.len() <= 2),
        "a mail arrived three times"
    );
    assert!(
        duplicated <= notifier::pipeline::dispatch::max_in_flight(CONCURRENCY, 25),
        "{duplicated} mails arrived twice; only the killed instance's deliveries in flight (sending, or sent and waiting for their group commit) may"
    );

    let rate_before_kill = at_kill as f64 / kill_time.as_secs_f64();
    let rate_overall = mails.len() as f64 / total_time.as_secs_f64();
    println!(
        "three instances: {at_kill} mails in {kill_time:.1?} before the kill ({rate_before_kill:.0} mails/s, ingest included); \
         {} mails in {total_time:.1?} overall ({rate_overall:.0} mails/s, including the wait for the killed instance's leases); \
         events accepted per instance {per_instance:?}; {duplicated} duplicates",
        mails.len(),
    );

    for p in &mut instances[1..] {
        assert!(
            p.terminate(),
            "SIGTERM ends an instance with exit 0: {}",
            p.log_text()
        );
    }
    store.close().await;
}

/// The window behind "applied implies known": on PostgreSQL (READ
/// COMMITTED) an address change can read "no such user" and then apply,
/// because another instance created the user in between. Ingest must not
/// assume the first read.
/// PostgreSQL: an instance that only ingests (`dispatch.enabled = false`)
/// wakes another that only sends and would otherwise poll once an hour
/// (`LISTEN`/`NOTIFY`).
#[tokio::test]
async fn an_ingesting_instance_wakes_a_sending_instance_through_the_database() {
    let ingesting =
        spawn_app_with("[dispatch]\nenabled = false", TestBackend::Postgres, |_| {}).await;
    let mut sender = ingesting.settings.clone();
    sender.dispatch.enabled = true;
    sender.dispatch.idle_poll = notifier::config::HumanDuration(Duration::from_secs(3600));
    // Its own, silent exchange and queue: it receives no event, so only a
    // notification can tell it that something is due.
    let silent = format!("silent.{}", uuid::Uuid::new_v4());
    sender.amqp.exchange = silent.clone();
    sender.amqp.queue = silent.clone();
    sender.amqp.dead_letter_exchange = format!("{silent}.dlx");
    sender.amqp.dead_letter_queue = format!("{silent}.dlq");
    sender.http.listen = "127.0.0.1:0".parse().unwrap();
    let sender = notifier::app::App::build(sender)
        .await
        .expect("the sending instance started");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(sender.run(stop.clone()));
    // Its listener is subscribed before anything is published.
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(ingesting.store.pool())
        .await
        .unwrap();
        if listening > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sending instance never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    ingesting
        .import_directory(&crate::support::sample_directory())
        .await;
    for _ in 0..2 {
        let id = ingesting
            .publish_fresh("contract.voorstel_aangeboden")
            .await;
        ingesting
            .wait_deliveries(
                Some(&id),
                "both deliveries sent by the other instance",
                |r| r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent),
            )
            .await;
    }
    assert_eq!(ingesting.smtp.count(), 4);
    stop.cancel();
    // Bounded: a stop that never completes fails here instead of holding
    // the whole suite (`pipeline::a_stop_during_an_empty_round_stops_the_service`
    // pins the cause found in CI).
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("the sending instance stops within 60 s of the stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_address_change_can_apply_to_a_user_created_after_it_was_read() {
    use notifier::domain::ids::{EmailAddress, Gebruikersnummer};
    use notifier::store::directory::{self as dir, UserChange};
    let db = TestDb::postgres().await;
    let store = db.store().await;
    let nr = Gebruikersnummer::parse("80000000000001").unwrap();
    let mut b = store.begin().await.unwrap();
    assert!(
        dir::get_user_for_update(&mut b, store.backend(), &nr)
            .await
            .unwrap()
            .is_none()
    );
    // Another instance creates the user meanwhile.
    crate::support::import_directory(
        &store,
        &crate::support::user(
            "80000000000001",
            "oud@praktijk.example",
            true,
            &[("04111222", &["uitvragen"], false, true)],
            1,
        )
        .to_string(),
    )
    .await;
    let change = dir::set_email(
        &mut b,
        &nr,
        &EmailAddress::parse("nieuw@praktijk.example").unwrap(),
        2,
        2,
    )
    .await
    .unwrap();
    assert_eq!(change, UserChange::Applied);
    b.commit().await.unwrap();
}

/// Two instances apply creations and address changes of the same users at
/// once: nobody panics, every event ends in a final state, and every user
/// whose change was applied has the newest address and versie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_applying_the_same_users_converge_without_a_panic() {
    let deployment = Deployment::new(TestBackend::Postgres).await;
    let s = &deployment.settings;
    let store = deployment.store().await;
    let env = [("NOTIFIER_AMQP__PREFETCH", "1")];
    let mut a = deployment.spawn("a", &env);
    let mut b = deployment.spawn("b", &env);
    a.wait_consuming().await;
    b.wait_consuming().await;
    let publisher = Publisher::connect(crate::support::AMQP_URL, &s.amqp.exchange)
        .await
        .unwrap();
    let n = 150;
    let mut ids = Vec::new();
    for i in 0..n {
        let nr = format!("8100000000{i:04}");
        let create = crate::support::user_event(crate::support::user(
            &nr,
            &format!("oud{i}@praktijk.example"),
            true,
            &[("04111223", &["uitvragen"], false, false)],
            1,
        ));
        let mut change = crate::support::fresh("gebruiker.emailadres_gewijzigd");
        change["data"]["gebruikersnummer"] = nr.clone().into();
        change["data"]["oud_email"] = format!("oud{i}@praktijk.example").into();
        change["data"]["nieuw_email"] = format!("nieuw{i}@praktijk.example").into();
        change["data"]["versie"] = 2.into();
        for e in [&create, &change] {
            publisher
                .publish(e["type"].as_str().unwrap(), None, e.to_string().as_bytes())
                .await
                .unwrap();
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(store.pool())
            .await
            .unwrap();
        if recorded as usize == ids.len() {
            break;
        }
        for p in [&mut a, &mut b] {
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "an instance exited: {}",
                p.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {recorded} of {} events recorded",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT e.state, u.email, CAST(u.versie AS TEXT) FROM events e \
         JOIN users u ON u.gebruikersnummer = (e.payload::json -> 'data' ->> 'gebruikersnummer') \
         WHERE e.type = 'gebruiker.emailadres_gewijzigd'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), n);
    for (state, email, versie) in &rows {
        match state.as_str() {
            "applied" => assert!(
                email.starts_with("nieuw") && versie == "2",
                "{state} {email} {versie}"
            ),
            // Processed before the other instance had created the user.
            "ignored" => assert!(
                email.starts_with("oud") && versie == "1",
                "{state} {email} {versie}"
            ),
            other => panic!("unexpected state {other}"),
        }
    }
    for p in [&mut a, &mut b] {
        assert!(!p.log_text().contains("panicked"), "{}", p.log_text());
        assert!(p.terminate(), "{}", p.log_text());
    }
}
