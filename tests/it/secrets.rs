//! Secrets (issue 16): the SMTP password, the bounce key and the passwords
//! in `amqp.url` and `database.url`, handed to the real binary in the
//! configuration file, as `NOTIFIER_` variables or as files, reach the
//! relay, the broker and the database, and show up nowhere else: in no
//! output of any command at log level debug, whether the connections work
//! or fail, and not in the settings' `Debug`. Each secret is a distinctive
//! string, so a leak anywhere in the output is found by a plain search.

use crate::support::smtp_server::TestSmtpServer;
use crate::support::{
    RunProcess, TestConfig, TestDb, WAIT, free_port, fresh, http_get, sample_directory,
};
use figment::Figment;
use figment::providers::{Format, Toml};
use notifier::config::{DEFAULT_TOML, ExposeSecret, Settings};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const SMTP_PASSWORD: &str = "s3cr3t-smtp-Zq9";
const BOUNCE_KEY: &str = "s3cr3t-bounce-Zq9-0123456789abcdef-XyZ";
const AMQP_PASSWORD: &str = "s3cr3t-amqp-Zq9";
const DB_PASSWORD: &str = "s3cr3t-db-Zq9";
const SECRETS: [&str; 4] = [SMTP_PASSWORD, BOUNCE_KEY, AMQP_PASSWORD, DB_PASSWORD];

/// How the secrets reach the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `[smtp] password = ...` and so on in `--config FILE`.
    ConfigFile,
    /// `NOTIFIER_SMTP__PASSWORD=...` and so on.
    Env,
    /// Files named by `NOTIFIER_SMTP__PASSWORD_FILE` and
    /// `NOTIFIER_AMQP__URL_FILE`, and by `bounce_key_file` and
    /// `database.url_file` in the configuration file (both ways of naming one).
    Files,
}

/// The two URLs that carry a password.
struct Urls {
    amqp: String,
    database: String,
}

/// One installation as an operator sets it up: a folder, a relay that
/// wants a login over TLS, a PostgreSQL database, and settings at log
/// level debug without any secret in them (the route adds those).
struct Setup {
    dir: tempfile::TempDir,
    /// Signs the relay's certificate; its file is `smtp.ca_file`.
    _ca: crate::support::tls::TestCa,
    smtp: TestSmtpServer,
    db: TestDb,
    base: TestConfig,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::support::tls::TestCa::new();
        let smtp = TestSmtpServer::start_implicit_tls_with(ca.acceptor(&["localhost"])).await;
        smtp.require_auth("mailer", SMTP_PASSWORD, "PLAIN");
        let db = TestDb::postgres().await;
        let base = TestConfig::new(dir.path())
            .smtp(&smtp.url_as("smtps", "localhost"))
            .with(&format!(
                r#"
[smtp]
username = "mailer"
ca_file = {}
bounce_address = "bounces@zip.example.nl"
[log]
level = "debug"
format = "json"
"#,
                toml::Value::from(ca.ca_file().to_str().unwrap())
            ));
        Self {
            dir,
            _ca: ca,
            smtp,
            db,
            base,
        }
    }

    /// The test database's URL with the secret password in it (the server
    /// trusts local connections, so the password is carried, not checked).
    fn database_url(&self) -> String {
        with_password(&self.db.url, DB_PASSWORD)
    }

    /// Writes `config.toml` for `route` with these URLs; returns its path
    /// and the environment that goes with it.
    fn configure(&self, route: Route, urls: &Urls, name: &str) -> (PathBuf, Vec<(String, String)>) {
        let mut toml: toml::Table = self.base.toml().parse().unwrap();
        // The test base names a SQLite file; here the URL comes by the route.
        toml["database"].as_table_mut().unwrap().remove("url");
        let mut env = Vec::new();
        let mut set = |section: &str, key: &str, value: &str| {
            toml[section]
                .as_table_mut()
                .unwrap()
                .insert(key.into(), value.into());
        };
        match route {
            Route::ConfigFile => {
                set("smtp", "password", SMTP_PASSWORD);
                set("smtp", "bounce_key", BOUNCE_KEY);
                set("amqp", "url", &urls.amqp);
                set("database", "url", &urls.database);
            }
            Route::Env => {
                env.push(("NOTIFIER_SMTP__PASSWORD".into(), SMTP_PASSWORD.into()));
                env.push(("NOTIFIER_SMTP__BOUNCE_KEY".into(), BOUNCE_KEY.into()));
                env.push(("NOTIFIER_AMQP__URL".into(), urls.amqp.clone()));
                env.push(("NOTIFIER_DATABASE__URL".into(), urls.database.clone()));
            }
            Route::Files => {
                let dir = self.dir.path().join(format!("{name}-secrets"));
                std::fs::create_dir_all(&dir).unwrap();
                // As `echo` and editors write them: with a line break.
                let file = |n: &str, content: &str| {
                    let p = dir.join(n);
                    std::fs::write(&p, format!("{content}\n")).unwrap();
                    p.display().to_string()
                };
                env.push((
                    "NOTIFIER_SMTP__PASSWORD_FILE".into(),
                    file("smtp-password", SMTP_PASSWORD),
                ));
                env.push((
                    "NOTIFIER_AMQP__URL_FILE".into(),
                    file("amqp-url", &urls.amqp),
                ));
                set("smtp", "bounce_key_file", &file("bounce-key", BOUNCE_KEY));
                set(
                    "database",
                    "url_file",
                    &file("database-url", &urls.database),
                );
            }
        }
        // Whatever RUST_LOG the test runner has, the binary logs at debug,
        // the short commands too (they log at warn unless RUST_LOG says otherwise).
        env.push(("RUST_LOG".into(), "debug".into()));
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&toml).unwrap()).unwrap();
        (path, env)
    }
}

fn with_password(url: &str, password: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_password(Some(password)).unwrap();
    u.to_string()
}

/// Runs `notifier --config CONFIG ARGS` with `env`.
fn notifier(config: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn succeeded(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        text(o)
    );
    text(o)
}

fn spawn(config: &Path, name: &str, env: &[(String, String)]) -> RunProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    RunProcess::spawn(config, name, &env)
}

/// Waits until the `run` process's log holds every one of `needles`.
async fn wait_log(run: &mut RunProcess, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = run.log_text();
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!("notifier run exited with {status}: {log}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never showed {needles:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/metrics` of the `run` process holds `needle`.
async fn wait_metrics(run: &RunProcess, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if run.metrics().await.contains(needle) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics never showed {needle}:\n{}",
            run.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[track_caller]
fn assert_no_secret(what: &str, output: &str) {
    for secret in SECRETS {
        assert!(
            !output.contains(secret),
            "{what} shows the secret {secret}:\n{output}"
        );
    }
}

/// A RabbitMQ user with the secret password, in a vhost of its own; both
/// removed when dropped (removing the vhost removes the test's queues).
struct BrokerUser {
    user: String,
    vhost: String,
}

impl BrokerUser {
    fn create() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let it = Self {
            user: format!("test-secrets-{tag}"),
            vhost: format!("test-secrets-{tag}"),
        };
        rabbitmqctl(&["add_vhost", &it.vhost]);
        rabbitmqctl(&["add_user", &it.user, AMQP_PASSWORD]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &it.vhost,
            &it.user,
            ".*",
            ".*",
            ".*",
        ]);
        it
    }

    fn url(&self) -> String {
        format!(
            "amqp://{}:{AMQP_PASSWORD}@127.0.0.1:5672/{}",
            self.user, self.vhost
        )
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.user])
            .output();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl (the tests' RabbitMQ runs on this machine)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", text(&out));
}

fn events_file(dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(
        &path,
        format!("{}\n", fresh("contract.voorstel_aangeboden")),
    )
    .unwrap();
    path.display().to_string()
}

/// The whole check for one route. Every output is collected and searched
/// for the secrets at the end; on the way, each step asserts that it did
/// what it should, so that "no secret" is never the silence of a step that
/// did nothing.
async fn secrets_stay_secret(route: Route) {
    let setup = Setup::new().await;
    let broker = BrokerUser::create();
    let dir = setup.dir.path();
    let mut outputs: Vec<(String, String)> = Vec::new();

    // 1. Everything connects: migrate, load the directory, ingest, and
    //    `run` sends the mail with the relay login and a signed bounce tag.
    let good = Urls {
        amqp: broker.url(),
        database: setup.database_url(),
    };
    let (config, env) = setup.configure(route, &good, "good");
    outputs.push((
        "migrate".into(),
        succeeded(&notifier(&config, &env, &["migrate"])),
    ));
    let directory = dir.join("directory.jsonl");
    std::fs::write(&directory, sample_directory()).unwrap();
    let out = notifier(
        &config,
        &env,
        &["directory", "import", directory.to_str().unwrap()],
    );
    outputs.push(("directory import".into(), succeeded(&out)));
    let out = notifier(&config, &env, &["ingest", &events_file(dir, "first")]);
    outputs.push(("ingest".into(), succeeded(&out)));

    let mut run = spawn(&config, "good", &env);
    run.wait_consuming().await;
    let mails = setup.smtp.wait_for_count(1, WAIT).await.unwrap();
    let ready = http_get(&format!("http://{}/readyz", run.http))
        .await
        .unwrap();
    assert!(ready.contains(r#""relay":"smtp""#), "{ready}");
    assert!(run.terminate(), "run stops cleanly: {}", run.log_text());
    let log = run.log_text();
    assert!(
        log.contains(r#""level":"DEBUG""#),
        "debug lines logged:\n{log}"
    );
    outputs.push(("run (connected)".into(), log));
    outputs.push(("/readyz".into(), ready));

    assert!(
        setup
            .smtp
            .auth_attempts()
            .iter()
            .any(|a| a.accepted && a.user == "mailer" && a.password == SMTP_PASSWORD),
        "the relay got the password: {} attempts",
        setup.smtp.auth_attempts().len()
    );
    let key = notifier::domain::bounce::BounceKey::parse(BOUNCE_KEY).unwrap();
    let raw = mails[0].data_str();
    let tag = raw
        .lines()
        .find_map(|l| l.strip_prefix("X-Notifier-Tag: "))
        .expect("a bounce tag");
    assert!(
        matches!(
            notifier::domain::bounce::check(tag.trim(), &key),
            notifier::domain::bounce::TagCheck::Delivery(_)
        ),
        "the tag is signed with the bounce key"
    );
    let out = notifier(&config, &env, &["deliveries", "list"]);
    outputs.push(("deliveries list".into(), succeeded(&out)));

    // 2. Broker and relay fail: the broker refuses the password (or, by
    //    files, is not there), the relay refuses the login (or is not
    //    there). The errors name the hosts, not the passwords.
    let closed = free_port();
    let broker_down = route == Route::Files;
    let bad = Urls {
        amqp: if broker_down {
            format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:{closed}/%2f")
        } else {
            format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:5672/%2f")
        },
        database: good.database.clone(),
    };
    let (mut config, env) = setup.configure(route, &bad, "bad-broker");
    if broker_down {
        let relay_closed = free_port();
        let toml = std::fs::read_to_string(&config).unwrap().replace(
            &format!("localhost:{}", setup.smtp.addr().port()),
            &format!("localhost:{relay_closed}"),
        );
        config = dir.join("bad-broker-relay.toml");
        std::fs::write(&config, toml).unwrap();
    } else {
        setup
            .smtp
            .reply_for_command("AUTH", "535 5.7.8 Authentication credentials invalid");
    }
    let out = notifier(&config, &env, &["ingest", &events_file(dir, "second")]);
    outputs.push(("ingest (second)".into(), succeeded(&out)));
    let mut run = spawn(&config, "bad-broker", &env);
    let broker_shown = if broker_down {
        format!("amqp://guest:***@127.0.0.1:{closed}/%2f")
    } else {
        "amqp://guest:***@127.0.0.1:5672/%2f".to_owned()
    };
    wait_log(&mut run, &["RabbitMQ session ended", &broker_shown]).await;
    // A relay that is not there is a transient failure; a refused login a relay fault.
    let outcome = if broker_down {
        r#"outcome="transient""#
    } else {
        r#"outcome="relay_fault""#
    };
    wait_metrics(&run, outcome).await;
    assert!(run.terminate(), "run stops cleanly: {}", run.log_text());
    let log = run.log_text();
    if !broker_down {
        assert!(
            log.contains("authentication at the relay failed"),
            "the relay refused the login:\n{log}"
        );
    }
    outputs.push(("run (broker and relay failing)".into(), log));
    setup.smtp.reset_script();

    // 3. The database is not there: `migrate` and `run` exit 3 naming it.
    let db_closed = free_port();
    let nowhere = Urls {
        amqp: good.amqp.clone(),
        database: format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:{db_closed}/notifier"),
    };
    let (config, env) = setup.configure(route, &nowhere, "no-database");
    for args in [&["migrate"][..], &["run"], &["check"]] {
        let out = notifier(&config, &env, args);
        let printed = text(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {printed}");
        assert!(
            printed.contains(&format!(
                "postgres://postgres:***@127.0.0.1:{db_closed}/notifier"
            )),
            "{args:?} names the database, redacted: {printed}"
        );
        outputs.push((format!("{args:?} (no database)"), printed));
    }

    for (what, output) in &outputs {
        assert_no_secret(&format!("{route:?}: {what}"), output);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_config_file_never_show() {
    secrets_stay_secret(Route::ConfigFile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_environment_never_show() {
    secrets_stay_secret(Route::Env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_files_never_show() {
    secrets_stay_secret(Route::Files).await;
}

/// `Debug` of the settings, with the secrets given as values and as files.
#[test]
fn the_settings_debug_output_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let amqp = format!("amqps://notifier:{AMQP_PASSWORD}@mq.example:5671/zip");
    let database = format!("postgres://notifier:{DB_PASSWORD}@db.example/notifier");
    let values = format!(
        "[smtp]\nurl = \"smtps://relay.example\"\nusername = \"mailer\"\npassword = \"{SMTP_PASSWORD}\"\n\
         bounce_address = \"bounces@zip.example.nl\"\nbounce_key = \"{BOUNCE_KEY}\"\n\
         [amqp]\nurl = \"{amqp}\"\n[database]\nurl = \"{database}\""
    );
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let files = format!(
        "[smtp]\nurl = \"smtps://relay.example\"\nusername = \"mailer\"\npassword_file = \"{}\"\n\
         bounce_address = \"bounces@zip.example.nl\"\nbounce_key_file = \"{}\"\n\
         [amqp]\nurl_file = \"{}\"\n[database]\nurl_file = \"{}\"",
        file("p", SMTP_PASSWORD),
        file("k", BOUNCE_KEY),
        file("a", &amqp),
        file("d", &database),
    );
    for toml in [values, files] {
        let s = Settings::from_figment(
            Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(&toml)),
        )
        .unwrap();
        assert_eq!(s.smtp.password.expose_secret(), SMTP_PASSWORD);
        let printed = format!("{s:?} {s:#?} {} {}", s.amqp.url, s.database.url);
        assert_no_secret("Debug of the settings", &printed);
        assert!(printed.contains("amqps://notifier:***@mq.example:5671/zip"));
    }
}

/// `--help` has nothing to show, even with every secret in the environment.
#[test]
fn help_shows_no_secret() {
    for args in [&["--help"][..], &["run", "--help"], &["migrate", "--help"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(args)
            .env("NOTIFIER_SMTP__PASSWORD", SMTP_PASSWORD)
            .env("NOTIFIER_SMTP__BOUNCE_KEY", BOUNCE_KEY)
            .env(
                "NOTIFIER_AMQP__URL",
                format!("amqp://u:{AMQP_PASSWORD}@127.0.0.1:5672/%2f"),
            )
            .env(
                "NOTIFIER_DATABASE__URL",
                format!("postgres://u:{DB_PASSWORD}@127.0.0.1/x"),
            )
            .output()
            .unwrap();
        let printed = succeeded(&out);
        assert!(printed.contains("Usage:"), "{printed}");
        assert_no_secret(&format!("{args:?}"), &printed);
    }
}
