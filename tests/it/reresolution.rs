//! Re-resolution (a directory record arriving inside
//! `recipients.late_directory_window`, or `notifier replay events`) adds
//! only what is missing: never a second copy to a user who moved, never a
//! "nobody got this" notice for an event whose mail went out, and it takes
//! back a pending `beheer.geen_ontvanger` once someone does get the mail.

use crate::support::{TestApp, fresh_for, spawn_app, user, user_event};

const U1: &str = "50000000000001";
const U2: &str = "50000000000002";

async fn publish_user(app: &TestApp, data: serde_json::Value) {
    let e = user_event(data);
    app.publish(&e).await;
    let id = e["id"].as_str().unwrap();
    let row = app.wait_event(id).await;
    assert_eq!(row.state, "applied", "{row:?}");
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
    assert_eq!(rows[0].status, "sent");

    publish_user(
        &app,
        user(
            U1,
            "nieuw@praktijk.example",
            true,
            &[(agb, &["uitvragen"], true, true)],
            2,
        ),
    )
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
        user(
            U1,
            "lid@praktijk.example",
            true,
            &[(agb, &["uitvragen"], false, false)],
            1,
        ),
        user(
            U2,
            "cp@praktijk.example",
            true,
            &[(agb, &["contracteren"], false, true)],
            1,
        ),
    ])
    .await;
    let event = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let id = event["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&event).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].status, "sent");

    // The only holder of the right loses it inside the window.
    publish_user(
        &app,
        user(
            U1,
            "lid@praktijk.example",
            true,
            &[(agb, &["contracteren"], false, false)],
            2,
        ),
    )
    .await;
    let rows = app.deliveries(Some(&id)).await;
    assert!(
        rows.iter().all(|d| d.kind != "beheer.geen_ontvanger"),
        "no false 'nobody got this' to the contact person: {rows:#?}"
    );
    assert_eq!(app.wait_event(&id).await.state, "accepted");
    app.stop().await;
}

#[tokio::test]
async fn a_pending_geen_ontvanger_is_cancelled_when_a_late_record_gets_the_mail() {
    let app = spawn_app("").await;
    let agb = "04777003";
    app.import_users(&[user(
        U2,
        "cp@praktijk.example",
        true,
        &[(agb, &["contracteren"], false, true)],
        1,
    )])
    .await;
    // The contact person's server greylists: the notice stays pending.
    app.smtp
        .reply_for_rcpt("cp@", "450 4.2.0 Greylisted, try again later");
    let event = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.wait_deliveries(Some(&id), "the notice tried", |r| {
        r.iter()
            .any(|d| d.kind == "beheer.geen_ontvanger" && d.status == "pending" && d.attempts >= 1)
    })
    .await;

    // The record of a user with the right arrives late.
    publish_user(
        &app,
        user(
            U1,
            "lid@praktijk.example",
            true,
            &[(agb, &["uitvragen"], false, false)],
            1,
        ),
    )
    .await;
    let rows = app
        .wait_deliveries(Some(&id), "the module mail sent", |r| {
            r.iter()
                .any(|d| d.kind == "uitvraag.vragenlijst_klaargezet" && d.status == "sent")
        })
        .await;
    let notice = rows
        .iter()
        .find(|d| d.kind == "beheer.geen_ontvanger")
        .unwrap();
    assert_eq!(notice.status, "cancelled", "{notice:#?}");
    assert_eq!(app.wait_event(&id).await.state, "accepted");
    assert!(
        app.smtp
            .messages()
            .iter()
            .all(|m| m.rcpt_to[0] != "cp@praktijk.example"),
        "the contact person is not told that nobody got it"
    );
    app.stop().await;
}
