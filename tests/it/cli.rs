//! The operator commands, run as the real binary.

use crate::support::smtp_server::TestSmtpServer;
use crate::support::{TestConfig, cli, fresh, sample_directory, stderr, stdout};
use notifier::domain::delivery::MailKind;

// Multi-threaded: the SMTP server must keep running while this thread waits on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_ingest_dispatch_list_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let s = TestConfig::new(dir.path()).smtp(&smtp.url()).settings();
    let out = cli(&s, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let dir_file = dir.path().join("directory.jsonl");
    std::fs::write(
        &dir_file,
        format!(
            "{}\n{{\"gebruikersnummer\": \"123\"}}\nnot json\n",
            sample_directory().trim_end()
        ),
    )
    .unwrap();
    let out = cli(&s, &["directory", "import", dir_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "rejected lines: exit 1");
    assert!(
        stdout(&out).contains("inserted 5, updated 0, stale 0, rejected 2"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("line 6: rejected: gebruikersnummer"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("line 7: rejected: not valid JSON"),
        "{}",
        stderr(&out)
    );
    let out = cli(&s, &["directory", "import", dir_file.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("inserted 0, updated 0, stale 5, rejected 2"),
        "{}",
        stdout(&out)
    );

    let ev = fresh("contract.voorstel_aangeboden");
    let id = ev["id"].as_str().unwrap().to_owned();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        format!("{}\n{}\n", ev, fresh("uitvraag.beoordeeld")),
    )
    .unwrap();
    let out = cli(&s, &["ingest", events.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("accepted 2"), "{}", stdout(&out));
    let out = cli(&s, &["ingest", events.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("duplicate 2"),
        "ingest is idempotent: {}",
        stdout(&out)
    );

    let out = cli(&s, &["dispatch", "--until-idle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("sent 4"), "{}", stdout(&out));
    assert_eq!(smtp.count(), 4);

    let out = cli(
        &s,
        &["deliveries", "list", "--event", &id, "--format", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for key in [
            "id",
            "event_id",
            "event_type",
            "kind",
            "agb_code",
            "recipient",
            "status",
            "attempts",
            "message_id",
            "created_at",
            "sent_at",
            "last_error",
        ] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert_eq!(r["status"], "sent");
        assert_eq!(r["attempts"], 1);
        assert_eq!(r["event_type"], "contract.voorstel_aangeboden");
        assert!(!r["message_id"].as_str().unwrap().contains('<'));
        assert!(r["sent_at"].as_str().unwrap().ends_with('Z'));
    }

    let out = cli(&s, &["events", "show", &id, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["final_state"], "done");
    assert_eq!(v["deliveries"][0]["users"][0]["rule"], "U(contracteren)");
    assert_eq!(v["deliveries"][0]["attempt_log"][0]["outcome"], "sent");
}

#[tokio::test]
async fn templates_check_passes_and_a_broken_template_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestConfig::new(dir.path()).settings();
    let out = cli(&s, &["templates", "check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("all 19 templates render"));

    let tpl = dir.path().join("tpl");
    crate::support::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        &tpl,
    );
    std::fs::write(
        tpl.join("uitvraag.beoordeeld/text.hbs"),
        "{{data.bestaat_niet}}",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["templates", "check"])
        .env("NOTIFIER_MAIL__TEMPLATES_DIR", &tpl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAIL  uitvraag.beoordeeld"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_bad_setting_names_the_key_and_exits_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["migrate"])
        .env("NOTIFIER_SMTP__URL", "smtp://relay?tls=maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("smtp.url"), "{}", stderr(&out));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["migrate"])
        .env("NOTIFIER_DISPATCH__LEASE", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("dispatch.lease"), "{}", stderr(&out));
}

/// `notifier migrate` in an empty folder with `env`: its exit code and
/// standard error.
fn migrate_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .arg("migrate")
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn a_log_level_that_is_not_a_level_is_exit_2() {
    // tracing would read `inf0` as a target and log nothing at all.
    for bad in ["inf0", "info,notifier=verbose", "notifier"] {
        let (code, err) = migrate_with(&[("NOTIFIER_LOG__LEVEL", bad)]);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(err.contains("log.level"), "{err}");
    }
    let (code, err) = migrate_with(&[("NOTIFIER_LOG__LEVEL", "warn,notifier=debug")]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn unknown_settings_are_exit_2_naming_them() {
    let (code, err) = migrate_with(&[("NOTIFIER_SMTP__PASWORD", "x")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("pasword"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[database]\nurl_fiel = \"/run/secrets/db\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("url_fiel"), "{}", stderr(&out));
}

#[test]
fn a_secret_given_twice_or_from_an_unreadable_file_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp-password");
    std::fs::write(&file, "s3cr3t-from-file-Zq9\n").unwrap();
    let file = file.to_str().unwrap();
    let (code, err) = migrate_with(&[
        ("NOTIFIER_SMTP__PASSWORD", "s3cr3t-from-env-Zq9"),
        ("NOTIFIER_SMTP__PASSWORD_FILE", file),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("smtp.password and smtp.password_file are both set"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");

    let missing = dir.path().join("no-such-file");
    let missing = missing.to_str().unwrap();
    let (code, err) = migrate_with(&[("NOTIFIER_AMQP__URL_FILE", missing)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("amqp.url_file: cannot read"), "{err}");
    assert!(err.contains(missing), "{err}");

    // Read, and one line break dropped: the run starts (here: migrates).
    let (code, err) = migrate_with(&[("NOTIFIER_SMTP__PASSWORD_FILE", file)]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_secret_in_the_environment_is_taken_as_written() {
    // figment would read these as a number and an array.
    for password in ["40961234", "[s3cr3t"] {
        let (code, err) = migrate_with(&[("NOTIFIER_SMTP__PASSWORD", password)]);
        assert_eq!(code, Some(0), "{password}: {err}");
    }
    // In a TOML file a number is a number: refused without showing it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[smtp]\npassword = 40961234\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["--config", config.to_str().unwrap(), "migrate"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("smtp.password: expected a string"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("40961234"), "{}", stderr(&out));
}

#[test]
fn a_bounce_address_needs_a_long_enough_key_which_is_never_printed() {
    let short = "short-secret-4711";
    for key in [None, Some(short)] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"));
        cmd.args(["migrate"])
            .env("NOTIFIER_SMTP__BOUNCE_ADDRESS", "bounces@zip.example.nl");
        if let Some(k) = key {
            cmd.env("NOTIFIER_SMTP__BOUNCE_KEY", k);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{key:?}");
        assert!(stderr(&out).contains("smtp.bounce_key"), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains(short) && !stdout(&out).contains(short),
            "the key was printed: {}",
            stderr(&out)
        );
    }
}

#[test]
fn demo_outbox_mails_carry_the_bounce_tag_and_no_output_names_the_key() {
    use notifier::domain::bounce::{BounceKey, TagCheck, check};
    let key = "demo-bounce-key-0123456789abcdef-secret";
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .arg("demo")
        .current_dir(dir.path())
        .env("NOTIFIER_SMTP__BOUNCE_ADDRESS", "bounces@zip.example.nl")
        .env("NOTIFIER_SMTP__BOUNCE_KEY", key)
        .env("NOTIFIER_LOG__LEVEL", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains(key), "the key was printed");
    let key = BounceKey::parse(key).unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(dir.path().join("outbox")).unwrap() {
        let path = entry.unwrap().path();
        let delivery_id = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        let msg = mail_parser::MessageParser::default()
            .parse(&bytes)
            .expect("a MIME message");
        let tag = msg
            .header("X-Notifier-Tag")
            .and_then(|h| h.as_text())
            .unwrap_or_else(|| panic!("{} has no X-Notifier-Tag", path.display()));
        assert_eq!(check(tag, &key), TagCheck::Delivery(delivery_id));
        assert!(!printed.contains(tag), "a tag was printed");
        n += 1;
    }
    assert!(n >= 20, "one .eml per sent mail, got {n}");
}

#[test]
fn demo_runs_without_broker_or_relay() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .arg("demo")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("contract.voorstel_aangeboden"));
    assert!(!text.lines().any(|l| l.ends_with("  failed")), "{text}");
    let emls = std::fs::read_dir(dir.path().join("outbox"))
        .unwrap()
        .count();
    assert!(emls >= 20, "one .eml per sent mail, got {emls}");
}

#[test]
fn a_short_command_never_creates_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nowhere.db");
    let events = dir.path().join("e.jsonl");
    std::fs::write(
        &events,
        format!("{}\n", crate::support::fresh("uitvraag.beoordeeld")),
    )
    .unwrap();
    for args in [
        vec!["ingest", events.to_str().unwrap()],
        vec!["dispatch", "--until-idle"],
        vec!["deliveries", "list"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(&args)
            .env(
                "NOTIFIER_DATABASE__URL",
                format!("sqlite://{}", db.display()),
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("run `notifier migrate`"),
            "{}",
            stderr(&out)
        );
        assert!(!db.exists(), "{args:?} created the database");
    }
}

/// Addresses the directory's own syntax allows but no mail can be built for
/// are refused at import, each line with its number and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_import_refuses_addresses_the_sender_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let s = TestConfig::new(dir.path()).smtp(&smtp.url()).settings();
    assert!(cli(&s, &["migrate"]).status.success());
    let line = |nr: &str, email: &str| {
        crate::support::user(
            nr,
            email,
            true,
            &[("04999100", &["uitvragen"], false, true)],
            1,
        )
        .to_string()
    };
    let file = dir.path().join("directory.jsonl");
    std::fs::write(
        &file,
        [
            line("70000000000001", "goed@praktijk.example"),
            line("70000000000002", "a..b@praktijk.example"),
            line("70000000000003", ".a@praktijk.example"),
            line("70000000000004", "a@-praktijk.example"),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = cli(&s, &["directory", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("inserted 1, updated 0, stale 0, rejected 3"),
        "{}",
        stdout(&out)
    );
    for n in 2..=4 {
        assert!(
            stderr(&out).contains(&format!(
                "line {n}: rejected: email: not an address mail can be sent to"
            )),
            "line {n}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn templates_check_fails_a_template_that_prints_event_text_unescaped() {
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("tpl");
    crate::support::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        &tpl,
    );
    let html = tpl.join("contract.geaccepteerd/html.hbs");
    let src = std::fs::read_to_string(&html).unwrap();
    assert!(src.contains("{{data.contract_naam}}"));
    std::fs::write(
        &html,
        src.replace("{{data.contract_naam}}", "{{{data.contract_naam}}}"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["templates", "check"])
        .env("NOTIFIER_MAIL__TEMPLATES_DIR", &tpl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report = stdout(&out);
    // Only the hostile data shows it: the sample's names are plain.
    assert!(
        report.contains("FAIL  contract.geaccepteerd")
            && report.contains("[hostile] the HTML prints event text unescaped"),
        "{report}"
    );
    assert!(!report.contains("[sample]"), "{report}");
    assert!(
        report.contains(&format!("templates: {}", tpl.display())),
        "{report}"
    );
}

#[tokio::test]
async fn templates_preview_writes_every_kind_and_render_prints_one_part() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestConfig::new(dir.path()).settings();
    let out_dir = dir.path().join("preview");
    let out = cli(
        &s,
        &[
            "templates",
            "preview",
            "--output",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let kinds: Vec<MailKind> = MailKind::all();
    for kind in &kinds {
        for variant in ["", ".hostile"] {
            for ext in ["html", "txt", "eml"] {
                let f = out_dir.join(format!("{}{variant}.{ext}", kind.as_str()));
                let body =
                    std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert!(body.contains("Zorginkoopportaal"), "{}", f.display());
            }
        }
    }
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        kinds.len() * 6
    );
    // Previews render as on the samples' day: the deadline lies ahead.
    let txt = std::fs::read_to_string(out_dir.join("contract.voorstel_aangeboden.txt")).unwrap();
    assert!(txt.contains("12 november 2026, over 29 dagen"), "{txt}");

    // One hand-written event, one part, as on a given day.
    let event = dir.path().join("event.json");
    std::fs::write(&event, fresh("contract.voorstel_aangeboden").to_string()).unwrap();
    let e = event.to_str().unwrap();
    let args = [
        "templates",
        "render",
        "contract.voorstel_aangeboden",
        "--event",
        e,
    ];
    let text = cli(
        &s,
        &[&args[..], &["--part", "text", "--today", "2026-11-12"]].concat(),
    );
    assert!(text.status.success(), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(text.contains("12 november 2026, vandaag"), "{text}");
    assert!(
        text.contains("https://zip.example.nl/contract/C-2027-118734"),
        "{text}"
    );
    let eml = stdout(&cli(&s, &args));
    assert!(
        eml.contains("\r\nSubject: Contractvoorstel"),
        "the default part is the whole message: {eml}"
    );
    let html = stdout(&cli(&s, &[&args[..], &["--part", "html"]].concat()));
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");

    // A kind that is not the event's: refused with the reason.
    let wrong = cli(
        &s,
        &["templates", "render", "uitvraag.beoordeeld", "--event", e],
    );
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        stderr(&wrong).contains("not a uitvraag.beoordeeld"),
        "{}",
        stderr(&wrong)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_render_takes_an_exported_notice_and_send_test_reaches_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let s = TestConfig::new(dir.path()).smtp(&smtp.url()).settings();
    assert!(cli(&s, &["migrate"]).status.success());
    let d = dir.path().join("directory.jsonl");
    std::fs::write(&d, sample_directory()).unwrap();
    assert!(
        cli(&s, &["directory", "import", d.to_str().unwrap()])
            .status
            .success()
    );
    // A module event nobody can receive: the contact persons get a notice.
    let mut e = fresh("naleving.aanleververzoek");
    e["data"]["agb_code"] = "04765432".into();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, format!("{e}\n")).unwrap();
    assert!(
        cli(&s, &["ingest", events.to_str().unwrap()])
            .status
            .success()
    );
    let export = dir.path().join("export.jsonl");
    assert!(
        cli(&s, &["export", "--output", export.to_str().unwrap()])
            .status
            .success()
    );
    let line = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .find(|l| l.contains("\"table\":\"deliveries\"") && l.contains("beheer.geen_ontvanger"))
        .expect("the notice's delivery is exported")
        .to_owned();
    let f = dir.path().join("notice.json");
    std::fs::write(&f, &line).unwrap();
    let out = cli(
        &s,
        &[
            "templates",
            "render",
            "beheer.geen_ontvanger",
            "--event",
            f.to_str().unwrap(),
            "--part",
            "text",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("omdat u contactpersoon bent voor AGB-code 04765432"),
        "{}",
        stdout(&out)
    );

    let out = cli(
        &s,
        &[
            "templates",
            "send-test",
            "contract.herinnering_acceptatie",
            "--to",
            "beheerder@zip.example.nl",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mails = smtp
        .wait_for_count(1, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let m = mails.last().unwrap();
    assert_eq!(m.rcpt_to, ["beheerder@zip.example.nl"]);
    let p = crate::support::parse_mail(m);
    assert!(p.subject.starts_with("[TEST] "), "{}", p.subject);

    // A relay that refuses: exit 1 with the relay's reason; not an address in it.
    smtp.reply_for_rcpt("beheerder", "550 5.1.1 no such user");
    let out = cli(
        &s,
        &[
            "templates",
            "send-test",
            "contract.herinnering_acceptatie",
            "--to",
            "beheerder@zip.example.nl",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("550"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("beheerder@"), "{}", stderr(&out));
}

/// `notifier purge`: a dry run that counts, an executed purge recorded in
/// `replay history`, `events show` saying `purged`, and replays refusing
/// what was purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_counts_then_executes_records_and_is_never_replayed() {
    use crate::support::{Installation, json, ok};
    let mut e = crate::support::fresh("uitvraag.vragenlijst_klaargezet");
    e["data"]["vragenlijst_naam"] = "Vragenlijst Zeldzaamnaam".into();
    let id = e["id"].as_str().unwrap().to_owned();
    // The relay refuses p.jansen: a failed mail, and the undeliverable
    // notice naming P. Jansen to the contact person.
    let Installation {
        dir: _dir,
        smtp: _smtp,
        settings: s,
    } = Installation::with_failed_mail("p.jansen@", &[&e]).await;
    let shown = |format: &str| cli(&s, &["events", "show", &id, "--format", format]);
    let before = json(&shown("json"));
    assert_eq!(before["purged"], false);
    let n = before["deliveries"].as_array().unwrap().len();
    assert!(n >= 3, "{before}");

    // A dry run counts and changes nothing.
    let out = cli(&s, &["purge", "--older-than", "0s", "--format", "json"]);
    ok(&out);
    let v = json(&out);
    assert_eq!(v["executed"], false);
    assert_eq!(v["replay_id"], serde_json::Value::Null);
    assert_eq!(v["counts"]["events"], 1);
    assert_eq!(v["counts"]["deliveries"], n);
    let out = cli(&s, &["purge", "--older-than", "0s"]);
    ok(&out);
    assert!(stdout(&out).contains("dry run"), "{}", stdout(&out));
    assert!(stdout(&out).contains("--execute --operator NAME --reason TEXT"));
    assert_eq!(json(&shown("json"))["purged"], false);

    // Usage errors: exit 2.
    for args in [
        &["purge", "--execute"][..],
        &["purge", "--execute", "--operator", "ops-test"],
        &["purge", "--older-than", "soon"],
        &["purge", "--vacuum"],
    ] {
        let out = cli(&s, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert!(
        stderr(&cli(&s, &["purge", "--execute"])).contains("--operator NAME and --reason TEXT")
    );

    let out = cli(
        &s,
        &[
            "purge",
            "--older-than",
            "0s",
            "--execute",
            "--operator",
            "ops-test",
            "--reason",
            "AVG-termijn verstreken",
            "--format",
            "json",
        ],
    );
    ok(&out);
    let v = json(&out);
    assert_eq!(v["executed"], true);
    assert_eq!(v["counts"]["events"], 1);
    assert_eq!(v["counts"]["deliveries"], n);
    let purge_id = v["replay_id"].as_str().expect("an audit row").to_owned();
    assert_eq!(v["files"]["complete"], true, "{v}");

    // `events show` says so, and shows neither the name nor an address.
    let out = shown("json");
    ok(&out);
    let after = json(&out);
    assert_eq!(after["purged"], true);
    assert!(after["purged_at"].as_str().unwrap().ends_with('Z'));
    // `events list` says so too.
    let listed = json(&cli(&s, &["events", "list", "--format", "json"]));
    let line = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == id.as_str())
        .expect("the event is listed");
    assert_eq!(line["purged"], true, "{line}");
    assert_eq!(after["deliveries"].as_array().unwrap().len(), n);
    for d in after["deliveries"].as_array().unwrap() {
        assert_eq!(d["recipient"], "(purged)");
        assert!(d["status"] == "sent" || d["status"] == "failed", "{d}");
    }
    let text = stdout(&out);
    for gone in [
        "Zeldzaamnaam",
        "fysio-noord.example",
        "P. Jansen",
        "10000000000002",
    ] {
        assert!(!text.contains(gone), "{gone} still shown: {text}");
    }
    let table = stdout(&shown("table"));
    assert!(table.contains("purged     true"), "{table}");

    // Recorded like a replay.
    let out = cli(&s, &["replay", "history", "--format", "json"]);
    ok(&out);
    let h = json(&out);
    assert_eq!(h[0]["id"], purge_id.as_str());
    assert_eq!(h[0]["command"], "purge");
    assert_eq!(h[0]["operator"], "ops-test");
    assert_eq!(h[0]["reason"], "AVG-termijn verstreken");
    assert_eq!(h[0]["filters"]["older_than"], "0s");
    assert_eq!(h[0]["counts"]["events"], 1);

    // Replays refuse it: by --event with exit 2, among others by count.
    for what in [
        &["replay", "deliveries", "--status", "failed", "--event", &id][..],
        &["replay", "events", "--event", &id],
    ] {
        let out = cli(&s, what);
        assert_eq!(out.status.code(), Some(2), "{what:?}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("purged by retention"),
            "{}",
            stderr(&out)
        );
    }
    let out = cli(
        &s,
        &[
            "replay",
            "deliveries",
            "--status",
            "failed",
            "--execute",
            "--operator",
            "ops-test",
            "--reason",
            "relay fixed",
            "--format",
            "json",
        ],
    );
    ok(&out);
    let v = json(&out);
    assert_eq!(
        (v["matched"].as_u64(), v["replayed"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(v["refused_purged"].as_u64().unwrap() >= 1, "{v}");

    // A second purge finds nothing left.
    let out = cli(&s, &["purge", "--older-than", "0s", "--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)["counts"]["events"], 0);
}
