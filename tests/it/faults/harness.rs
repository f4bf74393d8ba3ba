//! One scenario's world and its reconciliation: the real `notifier run`
//! processes, a generated directory, a stream published with confirms, the
//! faults injected, and at the end three sources compared (what was
//! published and what the model demands, what the database says through the
//! CLI, what the SMTP server accepted) into one report row.

use super::model::{self, Directory, Rng};
use crate::support::proxy::TcpProxy;
use crate::support::smtp_server::TestSmtpServer;
use crate::support::{
    AMQP_URL, RunProcess, TestBackend, TestConfig, TestDb, TopologyGuard, declare_topology,
    import_directory,
};
use notifier::broker::publisher::Publisher;
use notifier::config::Settings;
use notifier::store::Store;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Short (CI) or long (by hand, figures in docs/reliability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Short,
    Long,
}

/// `FAULTS_TIER=long` selects the long tier; anything else the short one.
pub fn tier() -> Tier {
    match std::env::var("FAULTS_TIER").as_deref() {
        Ok("long") => Tier::Long,
        _ => Tier::Short,
    }
}

/// Picks the short or the long figure.
pub fn by_tier<T>(short: T, long: T) -> T {
    match tier() {
        Tier::Short => short,
        Tier::Long => long,
    }
}

/// The binary under test: `FAULTS_NOTIFIER_BIN` (the long tier's release
/// build) or the debug build cargo made for this test binary.
fn bin() -> PathBuf {
    std::env::var_os("FAULTS_NOTIFIER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_notifier")))
}

/// Settings every scenario runs with (stated in docs/reliability.md).
const SUITE_TOML: &str = r#"
[smtp]
max_rate = 0
concurrency = 8
timeout = "5s"
[dispatch]
idle_poll = "50ms"
lease = "10s"
[retry]
schedule = ["1s", "2s"]
repeat = "2s"
jitter = 0.0
[breaker]
open_for = "2s"
[log]
format = "json"
level = "warn"
"#;

/// How a scenario is set up.
pub struct Options {
    pub backend: TestBackend,
    /// Practices in the generated directory.
    pub practices: usize,
    /// TOML on top of the suite's settings.
    pub extra: String,
    /// The workers reach RabbitMQ through a [`TcpProxy`] the scenario cuts.
    pub amqp_proxy: bool,
    /// The workers reach PostgreSQL through a [`TcpProxy`] the scenario cuts.
    pub db_proxy: bool,
    pub seed: u64,
}

impl Options {
    pub fn new(backend: TestBackend) -> Self {
        Self {
            backend,
            practices: 300,
            extra: String::new(),
            amqp_proxy: false,
            db_proxy: false,
            // FAULTS_SEED varies the directory and the stream; 7 by default.
            seed: std::env::var("FAULTS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(7),
        }
    }
}

/// Where a published message must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A module or directory event: recorded in `events`.
    Event,
    /// Bad input: one row in quarantine.
    Quarantine,
}

pub struct Published {
    pub id: Option<String>,
    pub fate: Fate,
}

/// A key of one mail: (event id, kind, lower-case address).
pub type MailKey = (String, String, String);

/// One `notifier run` process; a killed one stays listed (its log is shown on failure).
pub struct Worker {
    pub process: RunProcess,
    pub killed: bool,
}

/// One scenario in progress.
pub struct Scenario {
    pub name: String,
    pub backend: TestBackend,
    pub smtp: TestSmtpServer,
    pub settings: Settings,
    pub store: Store,
    pub directory: Directory,
    pub rng: Rng,
    pub amqp_proxy: Option<TcpProxy>,
    pub db_proxy: Option<TcpProxy>,
    config: PathBuf,
    publisher: Publisher,
    workers: Vec<Worker>,
    peak_rss_kb: u64,
    idle_rss_kb: u64,
    spawned: usize,
    /// Moments of injected kills and cuts: a send in flight then may repeat.
    faults: Vec<Instant>,
    published: Vec<Published>,
    /// Mails the model demands.
    pub required: BTreeSet<MailKey>,
    /// Mails the model allows besides (races, escalations).
    pub allowed: BTreeSet<MailKey>,
    /// Groups of which one mail must arrive (an address change racing a send).
    pub one_of: Vec<BTreeSet<MailKey>>,
    /// Addresses the relay refuses for good in this scenario.
    pub refused: BTreeSet<String>,
    /// (lower-case address, when the suite saw its user's revocation
    /// committed, in ms since the epoch): no attempt to it may start later.
    pub revoked: Vec<(String, i64)>,
    probe_agb: String,
    probes: usize,
    pub recover: Duration,
    fault_ended: Option<Instant>,
    started: Instant,
    pub notes: Vec<String>,
    /// The scenario's own check, shown and counted in the row.
    pub extra_failures: Vec<String>,
    _guard: TopologyGuard,
    _db: TestDb,
    dir: tempfile::TempDir,
}

impl Scenario {
    /// Makes the world: database, directory, topology, SMTP server, config.
    /// No worker runs yet ([`Scenario::start_workers`]).
    pub async fn new(name: &str, o: Options) -> Self {
        let db = TestDb::new(o.backend).await;
        let dir = tempfile::tempdir().unwrap();
        let smtp = TestSmtpServer::start().await;
        let direct = TestConfig::new(dir.path())
            .smtp(&smtp.url())
            .database(&db.url)
            .with(SUITE_TOML)
            .with(&o.extra);
        let settings = direct.settings();
        let guard = TopologyGuard(settings.amqp.clone());
        declare_topology(&settings.amqp).await;

        let mut worker_toml = direct.clone();
        let amqp_proxy = if o.amqp_proxy {
            let p = TcpProxy::rabbitmq().await;
            worker_toml = worker_toml.amqp(&p.amqp_url());
            Some(p)
        } else {
            None
        };
        let db_proxy = if o.db_proxy {
            assert_eq!(
                o.backend,
                TestBackend::Postgres,
                "a database cut needs PostgreSQL"
            );
            let p = TcpProxy::postgres().await;
            worker_toml = worker_toml.database(&p.database_url(&db.url));
            Some(p)
        } else {
            None
        };
        let (config, _) = worker_toml.config_file();

        let store = db.store().await;
        let mut rng = Rng::new(o.seed);
        let mut directory = Directory::generate(&mut rng, o.practices);
        let probe_agb = directory.add_probe_practice();
        import_directory(&store, &directory.jsonl()).await;
        let publisher = Publisher::connect(AMQP_URL, &settings.amqp.exchange)
            .await
            .unwrap();
        Self {
            name: name.to_owned(),
            backend: o.backend,
            smtp,
            settings,
            store,
            directory,
            rng,
            amqp_proxy,
            db_proxy,
            config,
            publisher,
            workers: Vec::new(),
            peak_rss_kb: 0,
            idle_rss_kb: 0,
            spawned: 0,
            faults: Vec::new(),
            published: Vec::new(),
            required: BTreeSet::new(),
            allowed: BTreeSet::new(),
            one_of: Vec::new(),
            refused: BTreeSet::new(),
            fault_ended: None,
            revoked: Vec::new(),
            probe_agb,
            probes: 0,
            recover: Duration::ZERO,
            started: Instant::now(),
            notes: Vec::new(),
            extra_failures: Vec::new(),
            _guard: guard,
            _db: db,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // ---- workers ----

    /// Starts `n` more workers and waits until each consumes.
    pub async fn start_workers(&mut self, n: usize) {
        for _ in 0..n {
            self.spawned += 1;
            let name = format!("worker{}", self.spawned);
            let mut p = RunProcess::spawn_bin(&bin(), &self.config, &name, &[]);
            p.wait_consuming().await;
            if self.idle_rss_kb == 0 {
                self.idle_rss_kb = proc_kb(p.child.id(), "VmRSS:").unwrap_or(0);
            }
            self.workers.push(Worker {
                process: p,
                killed: false,
            });
        }
    }

    /// `kill -9` of the `i`-th live worker; the moment counts as a fault.
    pub fn kill9(&mut self, i: usize) {
        let w = self
            .workers
            .iter_mut()
            .filter(|w| !w.killed)
            .nth(i)
            .expect("a live worker");
        if let Some(kb) = proc_kb(w.process.child.id(), "VmHWM:") {
            self.peak_rss_kb = self.peak_rss_kb.max(kb);
        }
        w.process.kill9();
        w.killed = true;
        self.faults.push(Instant::now());
    }

    /// The last fault is over: the time to recover runs from here.
    pub fn end_fault(&mut self) {
        self.fault_ended = Some(Instant::now());
    }

    /// Marks now as a fault moment (a cut).
    pub fn fault_now(&mut self) {
        self.faults.push(Instant::now());
    }

    /// The PIDs of the live workers (e.g. to read their RSS).
    pub fn live_pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|w| !w.killed)
            .map(|w| w.process.child.id())
            .collect()
    }

    fn sample_rss(&mut self) {
        for pid in self.live_pids() {
            if let Some(kb) = proc_kb(pid, "VmHWM:") {
                self.peak_rss_kb = self.peak_rss_kb.max(kb);
            }
        }
    }

    // ---- publishing ----

    /// Publishes `body` under `routing_key` and waits for the confirm.
    pub async fn publish_raw(
        &mut self,
        routing_key: &str,
        body: &[u8],
        id: Option<&str>,
        fate: Fate,
    ) {
        self.publisher
            .publish(routing_key, id, body)
            .await
            .expect("publish with confirm");
        self.published.push(Published {
            id: id.map(str::to_owned),
            fate,
        });
    }

    /// Publishes an event the model knows (no bookkeeping of mails).
    pub async fn publish_event(&mut self, e: &serde_json::Value) {
        let t = e["type"].as_str().unwrap().to_owned();
        let id = e["id"].as_str().unwrap().to_owned();
        self.publish_raw(&t, e.to_string().as_bytes(), Some(&id), Fate::Event)
            .await;
    }

    /// A module event for a random practice, with its mails in `required`.
    pub fn next_module_event(&mut self) -> serde_json::Value {
        let n = self.published.len();
        let agb = self.directory.agbs
            [self.rng.below(self.directory.agbs.len() as u64 - 1) as usize]
            .clone();
        let t = model::MODULE_TYPES[self.rng.below(model::MODULE_TYPES.len() as u64) as usize];
        let e = model::module_event(t, &agb, n);
        self.expect_event(&e);
        e
    }

    /// Adds the model's mails for `e` (given the directory now) to `required`,
    /// or to `allowed` for an address the relay refuses for good.
    pub fn expect_event(&mut self, e: &serde_json::Value) {
        let id = e["id"].as_str().unwrap().to_owned();
        let t = e["type"].as_str().unwrap();
        let agb = e["data"]["agb_code"].as_str().unwrap();
        for (kind, addr) in model::mails_for(&self.directory, t, agb) {
            let key = (id.clone(), kind.clone(), addr.clone());
            if self.refused.contains(&addr) {
                self.allowed.insert(key);
                // The failure is escalated to the practice's other contact persons.
                for cp in self.directory.cp(agb) {
                    if !self.refused.contains(&cp) {
                        self.allowed
                            .insert((id.clone(), "beheer.onbestelbaar".into(), cp));
                    }
                }
            } else {
                self.required.insert(key);
            }
        }
    }

    /// Publishes `n` module events for random practices.
    pub async fn publish_module_events(&mut self, n: usize) {
        for _ in 0..n {
            let e = self.next_module_event();
            self.publish_event(&e).await;
        }
    }

    /// Publishes a probe event (one mail, to the probe practice) and waits
    /// until the relay accepts it: the consumer is not stuck. Keeps the
    /// longest wait as the time to recover. Returns false after `within`.
    pub async fn probe(&mut self, within: Duration) -> bool {
        self.probes += 1;
        let agb = self.probe_agb.clone();
        let e = model::module_event("naleving.aanleververzoek", &agb, 1_000_000 + self.probes);
        self.expect_event(&e);
        let id = e["id"].as_str().unwrap().to_owned();
        let t0 = Instant::now();
        self.publish_event(&e).await;
        let seen = loop {
            if self.probe_delivered(&id).await {
                break true;
            }
            if t0.elapsed() > within {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.recover = self.recover.max(t0.elapsed());
        if !seen {
            self.extra_failures.push(format!(
                "probe event {id} not delivered within {}s: the consumer is stuck",
                within.as_secs()
            ));
        }
        seen
    }

    async fn probe_delivered(&self, event_id: &str) -> bool {
        let ids: BTreeSet<String> = self
            .smtp
            .messages()
            .iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == "probe@probe.example"))
            .filter_map(|m| message_id(&m.data_str()))
            .collect();
        if ids.is_empty() {
            return false;
        }
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT message_id FROM deliveries WHERE event_id = $1")
                .bind(event_id)
                .fetch_all(self.store.pool())
                .await
                .unwrap_or_default();
        rows.iter().any(|(m,)| ids.contains(m))
    }

    // ---- waiting ----

    /// Waits until every published message is final: each event recorded,
    /// each bad message in quarantine, no delivery pending or being sent.
    pub async fn wait_final(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let want_events: BTreeSet<String> = self
            .published
            .iter()
            .filter(|p| p.fate == Fate::Event)
            .filter_map(|p| p.id.clone())
            .collect();
        let want_quarantine = self
            .published
            .iter()
            .filter(|p| p.fate == Fate::Quarantine)
            .count();
        loop {
            self.sample_rss();
            let state = self.db_state().await;
            if let Ok((events, quarantined, open)) = &state {
                let missing = want_events.iter().filter(|i| !events.contains(*i)).count();
                if missing == 0 && *quarantined >= want_quarantine && *open == 0 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "not final after {}s: {missing} events unrecorded, {quarantined}/{want_quarantine} quarantined, {open} deliveries pending or sending",
                        within.as_secs()
                    ));
                }
            } else if Instant::now() > deadline {
                return Err(format!("database unreadable: {state:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn db_state(&self) -> Result<(BTreeSet<String>, usize, i64), String> {
        let ev: Vec<(String,)> = sqlx::query_as("SELECT id FROM events")
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| e.to_string())?;
        let (q,): (i64,) = sqlx::query_as("SELECT count(*) FROM quarantine")
            .fetch_one(self.store.pool())
            .await
            .map_err(|e| e.to_string())?;
        let (open,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')",
        )
        .fetch_one(self.store.pool())
        .await
        .map_err(|e| e.to_string())?;
        Ok((ev.into_iter().map(|(i,)| i).collect(), q as usize, open))
    }

    /// Waits until the relay has accepted at least `n` messages, the moment
    /// a fault is injected; not reaching it fails the scenario (the fault
    /// would have hit something else).
    pub async fn wait_accepted(&mut self, n: usize, within: Duration) {
        if let Err(e) = self.smtp.wait_for_count(n, within).await {
            self.extra_failures
                .push(format!("the stream never reached {n} accepted mails: {e}"));
        }
    }

    /// Waits until at least `n` events are recorded; not reaching it fails
    /// the scenario.
    pub async fn wait_recorded(&mut self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok((ev, _, _)) = self.db_state().await
                && ev.len() >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.extra_failures
            .push(format!("fewer than {n} events recorded within {within:?}"));
    }

    /// A random moment: sleeps 0..max.
    pub async fn random_pause(&mut self, max: Duration) {
        let ms = self.rng.below(max.as_millis().max(1) as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    // ---- reconciliation ----

    /// Waits for the end, reconciles and reports; panics (fails the test)
    /// when the pass rule does not hold.
    pub async fn finish(mut self) {
        let within = by_tier(Duration::from_secs(180), Duration::from_secs(1200));
        let mut final_state = self.wait_final(within).await;
        // The consumer is not stuck: an event published now arrives.
        if final_state.is_ok() {
            self.probe(Duration::from_secs(30)).await;
            if let Some(t) = self.fault_ended {
                self.recover = t.elapsed();
            }
            final_state = self.wait_final(Duration::from_secs(30)).await;
        }
        self.sample_rss();
        let exits: Vec<String> = self
            .workers
            .iter_mut()
            .filter(|w| !w.killed)
            .filter_map(|w| match w.process.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "{} exited on its own ({status}): {}",
                    w.process.log.display(),
                    tail(&w.process.log_text())
                )),
                _ => None,
            })
            .collect();
        // SQLite serves one instance: the CLI's export needs the workers stopped.
        let mut failures = self.extra_failures.clone();
        for w in self.workers.iter_mut().filter(|w| !w.killed) {
            if !w.process.terminate() {
                failures.push(format!(
                    "{} did not stop cleanly on SIGTERM",
                    w.process.log.display()
                ));
            }
            w.killed = true;
        }
        let r = self.reconcile().await;
        if let Err(e) = final_state {
            failures.push(e);
        }
        failures.extend(exits);
        if r.lost > 0 {
            failures.push(format!("{} lost, e.g. {:?}", r.lost, r.lost_examples));
        }
        if r.wrong > 0 {
            failures.push(format!(
                "{} to a wrong recipient, e.g. {:?}",
                r.wrong, r.wrong_examples
            ));
        }
        if r.duplicated > r.explained {
            failures.push(format!(
                "{} unexplained duplicates, e.g. {:?}",
                r.duplicated - r.explained,
                r.unexplained_examples
            ));
        }
        let rss_limit = self.rss_limit_kb();
        if self.peak_rss_kb > rss_limit {
            failures.push(format!(
                "peak RSS {} MB over the limit {} MB",
                self.peak_rss_kb / 1024,
                rss_limit / 1024
            ));
        }
        if r.refusals_not_failed > 0 {
            failures.push(format!(
                "{} mails to a refused address did not end failed",
                r.refusals_not_failed
            ));
        }
        if !self.refused.is_empty() {
            if r.escalated == 0 {
                failures.push("no beheer.onbestelbaar for the refused addresses".into());
            }
            self.notes
                .push(format!("{} onbestelbaar notices", r.escalated));
        }
        let pass = failures.is_empty();
        let row = Row {
            scenario: self.name.clone(),
            backend: match self.backend {
                TestBackend::Sqlite => "sqlite",
                TestBackend::Postgres => "postgres",
            },
            published: self.published.len(),
            expected: self.required.len() + self.one_of.len(),
            delivered: r.delivered,
            lost: r.lost,
            duplicated: r.duplicated,
            explained: r.explained,
            wrong: r.wrong,
            unknown: r.unknown,
            recover: self.recover,
            peak_rss_mb: self.peak_rss_kb / 1024,
            seconds: self.started.elapsed().as_secs(),
            pass,
            notes: self.notes.join("; "),
        };
        row.report();
        if !pass {
            for k in r.lost_examples.iter().take(2) {
                if let Some(id) = k.split('"').nth(1) {
                    let out = self.cli(&["events", "show", id]);
                    eprintln!(
                        "events show {id}:\n{}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
            let reasons: Vec<(String, i64)> = sqlx::query_as(
                "SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY count(*) DESC",
            )
            .fetch_all(self.store.pool())
            .await
            .unwrap_or_default();
            eprintln!("quarantine: {reasons:#?}");
            for w in &self.workers {
                eprintln!(
                    "--- {}:\n{}",
                    w.process.log.display(),
                    tail(&w.process.log_text())
                );
            }
            panic!(
                "scenario {} failed:\n- {}",
                self.name,
                failures.join("\n- ")
            );
        }
    }

    /// 150 MB, or idle + 140 MB where a scenario sends a 40 MB body.
    fn rss_limit_kb(&self) -> u64 {
        if self.notes.iter().any(|n| n.contains("40 MB")) {
            self.idle_rss_kb + 140 * 1024
        } else {
            150 * 1024
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new(bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            // The suite reads the database directly, not through a proxy it cuts.
            .env(
                "NOTIFIER_DATABASE__URL",
                self.settings.database.url.expose_secret(),
            )
            .env("NOTIFIER_AMQP__URL", AMQP_URL)
            .output()
            .expect("run notifier");
        assert!(
            out.status.success(),
            "notifier {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Compares the three sources.
    async fn reconcile(&self) -> Reconciled {
        // The database, as operators see it.
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&self.cli(&["deliveries", "list", "--format", "json"]).stdout)
                .expect("deliveries list --format json");
        let export = self.dir().join("export.jsonl");
        self.cli(&["export", "--output", export.to_str().unwrap()]);
        let mut about: HashMap<String, String> = HashMap::new();
        let mut unknown_of: HashMap<String, usize> = HashMap::new();
        let mut unknown = 0;
        let mut attempt_reads: HashMap<String, Vec<i64>> = HashMap::new();
        for line in std::fs::read_to_string(&export).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            match v["table"].as_str() {
                Some("deliveries") => {
                    about.insert(
                        v["id"].as_str().unwrap().to_owned(),
                        v["about"].as_str().unwrap_or("").to_owned(),
                    );
                }
                Some("attempts") => {
                    let d = v["delivery_id"].as_str().unwrap().to_owned();
                    if v["outcome"] == "unknown" {
                        unknown += 1;
                        *unknown_of.entry(d.clone()).or_default() += 1;
                    }
                    // When the directory was read for the attempt (the
                    // send-time re-check); attempts that read nothing count
                    // from their start.
                    let read_at = v["checked_at"]
                        .as_i64()
                        .or_else(|| v["started_at"].as_i64())
                        .unwrap_or(0);
                    attempt_reads.entry(d).or_default().push(read_at);
                }
                _ => {}
            }
        }
        struct Db {
            id: String,
            key: MailKey,
            about: String,
        }
        let by_mid: HashMap<String, Db> = list
            .iter()
            .map(|d| {
                let id = d["id"].as_str().unwrap().to_owned();
                (
                    d["message_id"].as_str().unwrap().to_owned(),
                    Db {
                        about: about.get(&id).cloned().unwrap_or_default(),
                        key: (
                            d["event_id"].as_str().unwrap().to_owned(),
                            d["kind"].as_str().unwrap().to_owned(),
                            d["recipient"].as_str().unwrap_or("").to_lowercase(),
                        ),
                        id,
                    },
                )
            })
            .collect();

        let mut r = Reconciled::default();
        // A refused address's module mails end failed, and are escalated.
        for d in &list {
            let to = d["recipient"].as_str().unwrap_or("").to_lowercase();
            let kind = d["kind"].as_str().unwrap_or("");
            if self.refused.contains(&to) && !kind.starts_with("beheer.") && d["status"] != "failed"
            {
                r.refusals_not_failed += 1;
            }
            if kind == "beheer.onbestelbaar" {
                r.escalated += 1;
            }
        }
        // What the relay accepted, one entry per (message, RCPT).
        // (event, kind, about, address) -> each copy: (Message-ID, accepted at, delivery id).
        type Copies = BTreeMap<(String, String, String, String), Vec<(String, Instant, String)>>;
        let mut copies = Copies::new();
        let mut received: BTreeSet<MailKey> = BTreeSet::new();
        for (m, at) in self.smtp.messages_with_times() {
            let mid = message_id(&m.data_str()).unwrap_or_default();
            for rcpt in &m.rcpt_to {
                let rcpt = rcpt.to_lowercase();
                let Some(d) = by_mid.get(&mid) else {
                    r.wrong += 1;
                    r.wrong_examples
                        .push(format!("<{mid}> unknown to the database"));
                    continue;
                };
                let key = (d.key.0.clone(), d.key.1.clone(), rcpt.clone());
                if !self.required.contains(&key)
                    && !self.allowed.contains(&key)
                    && !self.one_of.iter().any(|g| g.contains(&key))
                {
                    r.wrong += 1;
                    if r.wrong_examples.len() < 5 {
                        r.wrong_examples
                            .push(format!("{key:?} (delivery {})", d.id));
                    }
                }
                received.insert(key.clone());
                copies
                    .entry((key.0, key.1, d.about.clone(), rcpt))
                    .or_default()
                    .push((mid.clone(), at, d.id.clone()));
            }
        }
        // A revoked user must get nothing from an attempt whose send-time
        // re-check read the directory after the revocation had committed:
        // that read saw the revocation. (A revocation that commits between
        // the read and the send cannot stop that one send: docs/reliability.md.)
        for &(ref addr, revoked_at) in &self.revoked {
            for d in by_mid.values().filter(|d| &d.key.2 == addr) {
                let late = attempt_reads
                    .get(&d.id)
                    .is_some_and(|s| s.iter().any(|&t| t > revoked_at));
                let got = received
                    .iter()
                    .any(|k| k.0 == d.key.0 && k.1 == d.key.1 && &k.2 == addr);
                if late && got && d.key.1 != "certificaat.ingetrokken" {
                    r.wrong += 1;
                    r.wrong_examples
                        .push(format!("{:?} attempted after the revocation", d.key));
                }
            }
        }
        for k in &self.required {
            if received.contains(k) {
                r.delivered += 1;
            } else {
                r.lost += 1;
                if r.lost_examples.len() < 5 {
                    r.lost_examples.push(format!("{k:?}"));
                }
            }
        }
        for g in &self.one_of {
            if g.iter().any(|k| received.contains(k)) {
                r.delivered += 1;
            } else {
                r.lost += 1;
                r.lost_examples.push(format!("one of {g:?}"));
            }
        }
        for (key, c) in &copies {
            if c.len() < 2 {
                continue;
            }
            let extra = c.len() - 1;
            r.duplicated += extra;
            let same_id = c.iter().all(|x| x.0 == c[0].0);
            let unknown_attempt = unknown_of.get(&c[0].2).copied().unwrap_or(0) > 0;
            // The first copy was accepted shortly before a kill or a cut:
            // the worker died (or lost the database) before recording it.
            let in_flight = self.faults.iter().any(|f| {
                c[0].1 <= *f + Duration::from_secs(1)
                    && f.saturating_duration_since(c[0].1) < Duration::from_secs(5)
            });
            if same_id && (unknown_attempt || in_flight) {
                r.explained += extra;
            } else if r.unexplained_examples.len() < 5 {
                r.unexplained_examples.push(format!(
                    "{key:?}: {} copies, same Message-ID {same_id}, unknown attempt {unknown_attempt}",
                    c.len()
                ));
            }
        }
        r.unknown = unknown;
        r
    }
}

#[derive(Default, Debug)]
struct Reconciled {
    delivered: usize,
    lost: usize,
    lost_examples: Vec<String>,
    duplicated: usize,
    explained: usize,
    unexplained_examples: Vec<String>,
    wrong: usize,
    wrong_examples: Vec<String>,
    unknown: usize,
    refusals_not_failed: usize,
    escalated: usize,
}

/// One line of the suite's table.
struct Row {
    scenario: String,
    backend: &'static str,
    published: usize,
    expected: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    explained: usize,
    wrong: usize,
    unknown: usize,
    recover: Duration,
    peak_rss_mb: u64,
    seconds: u64,
    pass: bool,
    notes: String,
}

/// The columns of the table `tests/faults/run` prints.
pub const HEADER: &str = "scenario\tbackend\tpublished\texpected\tdelivered\tlost\tduplicated\texplained\twrong\tunknown\trecover_s\tpeak_rss_mb\ttook_s\tresult\tnotes";

impl Row {
    /// Prints the row and appends it to `FAULTS_REPORT` (a TSV file).
    fn report(&self) {
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{}\t{}\t{}\t{}",
            self.scenario,
            self.backend,
            self.published,
            self.expected,
            self.delivered,
            self.lost,
            self.duplicated,
            self.explained,
            self.wrong,
            self.unknown,
            self.recover.as_secs_f64(),
            self.peak_rss_mb,
            self.seconds,
            if self.pass { "pass" } else { "FAIL" },
            self.notes,
        );
        eprintln!("{HEADER}\n{line}");
        if let Some(path) = std::env::var_os("FAULTS_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("FAULTS_REPORT is writable");
            writeln!(f, "{line}").unwrap();
        }
    }
}

/// The Message-ID header of a raw mail, without angle brackets.
pub fn message_id(raw: &str) -> Option<String> {
    raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id").then(|| {
            value
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// A `/proc/PID/status` figure in kB (`VmHWM:` is the peak resident size).
fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
