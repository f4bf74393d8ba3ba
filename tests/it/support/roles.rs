//! Least-privilege accounts made from the deploy files, for one test each:
//! [`BrokerAccounts`] (a RabbitMQ vhost of the test's own with the users and
//! permission regexes of `deploy/rabbitmq/definitions.json`) and [`PgRoles`]
//! (the migration and runtime roles and the database of
//! `deploy/postgres/roles.sql`, under unique names). Both are removed when
//! dropped, also after a failed assertion. Roles are cluster-wide on the
//! shared PostgreSQL server: only the names made here are ever dropped.

use super::db::pg_server;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `deploy/rabbitmq/definitions.json`, parsed.
pub fn rabbitmq_definitions() -> Value {
    let text = std::fs::read_to_string(repo_file("deploy/rabbitmq/definitions.json")).unwrap();
    serde_json::from_str(&text).expect("definitions.json is JSON")
}

/// The (configure, write, read) regexes that definitions.json gives `user`.
pub fn documented_permissions(user: &str) -> [String; 3] {
    let defs = rabbitmq_definitions();
    let p = defs["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == user)
        .unwrap_or_else(|| panic!("definitions.json gives {user} no permissions"));
    ["configure", "write", "read"].map(|k| p[k].as_str().unwrap().to_owned())
}

/// The `[amqp]` names of definitions.json (exchange, queue, dead-letter
/// exchange and queue, delivery limit) as settings TOML.
pub fn documented_amqp_names() -> String {
    let defs = rabbitmq_definitions();
    let exchange = |kind: &str| {
        defs["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind)
            .unwrap()["name"]
            .clone()
    };
    let queues = defs["queues"].as_array().unwrap();
    let events = queues
        .iter()
        .find(|q| q["arguments"]["x-dead-letter-exchange"].is_string())
        .unwrap();
    let dead = queues.iter().find(|q| q["name"] != events["name"]).unwrap();
    format!(
        "[amqp]\nexchange = {}\nqueue = {}\ndead_letter_exchange = {}\ndead_letter_queue = {}\ndelivery_limit = {}",
        exchange("topic"),
        events["name"],
        exchange("fanout"),
        dead["name"],
        events["arguments"]["x-delivery-limit"],
    )
}

fn rabbitmqctl(args: &[&str]) -> Output {
    Command::new("rabbitmqctl")
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("rabbitmqctl is needed to make a test vhost and users (run as root or the rabbitmq user): {e}")
        })
}

#[track_caller]
fn must(what: &str, o: Output) {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A vhost of the test's own on the machine's RabbitMQ, with two users that
/// have exactly the permissions definitions.json gives `notifier` and
/// `portal`. The vhost (with everything declared in it) and the users are
/// deleted on drop.
pub struct BrokerAccounts {
    pub vhost: String,
    /// The worker's user (definitions.json's `notifier`).
    pub notifier: String,
    /// The publisher's user (definitions.json's `portal`).
    pub portal: String,
    password: String,
}

impl BrokerAccounts {
    /// Creates the vhost and both users (with `rabbitmqctl`: the management
    /// plugin is not enabled on the shared broker, and a test does not
    /// enable plugins there).
    pub fn new() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        // Built before anything exists, so that a failure half-way still
        // deletes what was made.
        let me = Self {
            vhost: format!("notifier_priv_{tag}"),
            notifier: format!("notifier_{tag}"),
            portal: format!("portal_{tag}"),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        must("add_vhost", rabbitmqctl(&["add_vhost", &me.vhost]));
        for (user, documented) in [(&me.notifier, "notifier"), (&me.portal, "portal")] {
            must("add_user", rabbitmqctl(&["add_user", user, &me.password]));
            let [configure, write, read] = documented_permissions(documented);
            must(
                "set_permissions",
                rabbitmqctl(&[
                    "set_permissions",
                    "-p",
                    &me.vhost,
                    user,
                    &configure,
                    &write,
                    &read,
                ]),
            );
        }
        me
    }

    /// `amqp://USER:…@127.0.0.1:5672/VHOST` for one of the two users.
    pub fn url(&self, user: &str) -> String {
        format!(
            "amqp://{user}:{}@127.0.0.1:5672/{}",
            self.password, self.vhost
        )
    }
}

impl Drop for BrokerAccounts {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        for user in [&self.notifier, &self.portal] {
            let _ = rabbitmqctl(&["delete_user", user]);
        }
    }
}

/// The roles and database of `deploy/postgres/roles.sql`, made by running
/// that file with psql as the server's superuser under unique names
/// (`notifier_mig_<tag>`, `notifier_run_<tag>`, database
/// `notifier_priv_<tag>`). On drop: `DROP DATABASE … WITH (FORCE)`, then
/// `DROP OWNED BY` and `DROP ROLE` for these two roles only.
pub struct PgRoles {
    pub migrate_role: String,
    pub runtime_role: String,
    pub database: String,
}

impl PgRoles {
    /// Runs `deploy/postgres/roles.sql` (trust authentication: no passwords).
    pub fn new() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let me = Self {
            migrate_role: format!("notifier_mig_{tag}"),
            runtime_role: format!("notifier_run_{tag}"),
            database: format!("notifier_priv_{tag}"),
        };
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-v", &format!("migrate_role={}", me.migrate_role)])
            .args(["-v", &format!("runtime_role={}", me.runtime_role)])
            .args(["-v", &format!("database={}", me.database)])
            .arg("-f")
            .arg(repo_file("deploy/postgres/roles.sql"))
            .arg(format!("{}/postgres", pg_server()))
            .output()
            .unwrap_or_else(|e| panic!("psql is needed to run deploy/postgres/roles.sql: {e}"));
        must("psql -f deploy/postgres/roles.sql", out);
        me
    }

    /// Runs another file of deploy/postgres as `role` in the database.
    pub fn run_file_as(&self, role: &str, file: &str) {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-v", &format!("runtime_role={}", self.runtime_role)])
            .arg("-f")
            .arg(repo_file(file))
            .arg(self.url(role))
            .output()
            .unwrap();
        must(&format!("psql -f {file}"), out);
    }

    /// `postgres://ROLE@host:port/DATABASE`.
    pub fn url(&self, role: &str) -> String {
        let server = pg_server();
        let host = server
            .rsplit_once('@')
            .map_or(server.as_str(), |(_, h)| h)
            .trim_start_matches("postgres://")
            .trim_start_matches("postgresql://");
        format!("postgres://{role}@{host}/{}", self.database)
    }
}

impl Drop for PgRoles {
    fn drop(&mut self) {
        let admin = format!("{}/postgres", pg_server());
        let sql = [
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
            // Anything the roles still own or were granted elsewhere; each on
            // its own, so a role that was never made does not stop the rest.
            format!("DROP OWNED BY {}", self.migrate_role),
            format!("DROP OWNED BY {}", self.runtime_role),
            format!("DROP ROLE IF EXISTS {}", self.runtime_role),
            format!("DROP ROLE IF EXISTS {}", self.migrate_role),
        ];
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    use sqlx::Connection;
                    let Ok(mut c) = sqlx::PgConnection::connect(&admin).await else {
                        return;
                    };
                    for s in sql {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut c).await;
                    }
                    let _ = c.close().await;
                });
        })
        .join();
    }
}
