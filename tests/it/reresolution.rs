//! Re-resolution (a directory record arriving inside
//! `recipients.late_directory_window`, or `notifier replay events`) adds
//! only what is missing: never a second copy to a user who moved, never a
//! "nobody got this" notice for an event whose mail went out, and it takes
//! back a pending `beheer.geen_ontvanger` once someone does get the mail.

use crate::support::{fresh_for, spawn_app, user, user_event};
use notifier::domain::delivery::DeliveryStatus;

const U1: &str = "50000000000001";
const U2: &str = "50000000000002";

/// U1, a member of `agb` with one right (no signer, no contact person).
fn member(agb: &str, email: &str, right: &str, versie: i64) -> serde_json::Value {
    user(U1, email, true, &[(agb, &[right], false, false)], versie)
}

/// U2, the contact person of `agb`, with `contracteren` only.
fn contact_person(agb: &str) -> serde_json::Value {
    user(
        U2,
        "cp@praktijk.example",
        true,
        &[(agb, &["contracteren"], false, true)],
        1,
    )
}

#[tokio::test]
async fn a_user_who_moved_inside_the_window_gets_the_mail_once() {
    let app = spawn_app("").await;
    let agb = "04777001";
    app.import_users(&[user(
        U1,
        "oud@praktijk.example",
        true,
        &[(agb, &["uitvragen"], true, true)],
        1,
    )])
    .await;
    let event = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let id = event["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&event).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, DeliveryStatus::Sent);

    app.publish_applied(&user_event(user(
        U1,
        "nieuw@praktijk.example",
        true,
        &[(agb, &["uitvragen"], true, true)],
        2,
    )))
    .await;
    let rows = app.deliveries(Some(&id)).await;
    assert_eq!(
        rows.len(),
        1,
        "no second delivery to the new address: {rows:#?}"
    );
    assert_eq!(app.smtp.count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_right_lost_after_the_mail_went_out_raises_no_notice_and_keeps_the_state() {
    let app = spawn_app("").await;
    let agb = "04777002";
    app.import_users(&[
        member(agb, "lid@praktijk.example", "uitvragen", 1),
        contact_person(agb),
    ])
    .await;
    let event = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let id = event["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&event).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].status, DeliveryStatus::Sent);

    // The only holder of the right loses it inside the window.
    app.publish_applied(&user_event(member(
        agb,
        "lid@praktijk.example",
        "contracteren",
        2,
    )))
    .await;
    let rows = app.deliveries(Some(&id)).await;
    assert!(
        rows.iter().all(|d| d.kind != "beheer.geen_ontvanger"),
        "no false 'nobody got this' to the contact person: {rows:#?}"
    );
    assert_eq!(
        app.wait_event(&id).await.state,
        notifier::domain::event::EventState::Accepted
    );
    app.stop().await;
}

#[tokio::test]
async fn a_pending_geen_ontvanger_is_cancelled_when_a_late_record_gets_the_mail() {
    let app = spawn_app("").await;
    let agb = "04777003";
    app.import_users(&[contact_person(agb)]).await;
    // The contact person's server greylists: the notice stays pending.
    app.smtp
        .reply_for_rcpt("cp@", "450 4.2.0 Greylisted, try again later");
    let event = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.wait_deliveries(Some(&id), "the notice tried", |r| {
        r.iter().any(|d| {
            d.kind == "beheer.geen_ontvanger"
                && d.status == DeliveryStatus::Pending
                && d.attempts >= 1
        })
    })
    .await;

    // The record of a user with the right arrives late.
    app.publish_applied(&user_event(member(
        agb,
        "lid@praktijk.example",
        "uitvragen",
        1,
    )))
    .await;
    let rows = app
        .wait_deliveries(Some(&id), "the module mail sent", |r| {
            r.iter().any(|d| {
                d.kind == "uitvraag.vragenlijst_klaargezet" && d.status == DeliveryStatus::Sent
            })
        })
        .await;
    let notice = rows
        .iter()
        .find(|d| d.kind == "beheer.geen_ontvanger")
        .unwrap();
    assert_eq!(notice.status, DeliveryStatus::Cancelled, "{notice:#?}");
    assert_eq!(
        app.wait_event(&id).await.state,
        notifier::domain::event::EventState::Accepted
    );
    assert!(
        app.smtp
            .messages()
            .iter()
            .all(|m| m.rcpt_to[0] != "cp@praktijk.example"),
        "the contact person is not told that nobody got it"
    );
    app.stop().await;
}
