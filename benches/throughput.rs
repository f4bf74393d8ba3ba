//! Throughput and latency benchmark of the notifier (issue "Throughput",
//! point 5). Not part of `cargo test`: run it with `tests/bench/run`, which
//! builds the release binary and then this driver.
//!
//! One run measures, on this machine and in the same run, the limits of the
//! parts and the whole pipeline, so each figure of the worker can be read
//! against what the relay, the SMTP client stack and the broker allow:
//!
//! 1. `smtp-source` against `smtp-sink` (Postfix's test tools), one
//!    connection per mail (`-s 8`) and connections reused (`-d`);
//! 2. a bare send loop of lettre's `AsyncSmtpConnection` over 8 nodelay
//!    connections (the client-side limit of the worker's stack);
//! 3. raw AMQP: publish with confirms, then consume and ack;
//! 4. end to end: events published first, then `notifier run` drains them
//!    (SQLite, PostgreSQL, PostgreSQL with two instances);
//! 5. ingest only (`dispatch.enabled = false`);
//! 6. fan-out of one event to thousands of users;
//! 7. latency from publish to relay acceptance at a steady event rate;
//! 8. memory while draining a large backlog.
//!
//! Every resource it makes (RabbitMQ vhost, PostgreSQL database, temp dir,
//! child process) is held by a guard whose `Drop` removes it, so a failure,
//! a panic or Ctrl-C cleans up as well. Every wait polls a condition with a
//! timeout (or a "no progress" limit) and fails with what it waited for.

use anyhow::{Context, Result, anyhow, bail};
use chrono::{SecondsFormat, Utc};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use notifier::config::Settings;
use notifier::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AMQP_BASE: &str = "amqp://guest:guest@127.0.0.1:5672";
const PG_HOST: &str = "127.0.0.1";
const PG_PORT: &str = "5432";
const PG_USER: &str = "postgres";
const EVENT_TYPE: &str = "contract.voorstel_aangeboden";
/// Sender and recipient of the raw SMTP runs (never printed).
const RAW_FROM: &str = "noreply@zip.example.nl";
const RAW_TO: &str = "ontvanger@praktijk.bench.example";
/// Relay connections of the raw runs and the worker (`smtp.concurrency`).
const CONNECTIONS: usize = 8;
/// A wait fails when its count has not moved for this long.
const NO_PROGRESS: Duration = Duration::from_secs(90);
/// How long a worker may take to stop after SIGTERM before the scenario fails.
const STOP_LIMIT: Duration = Duration::from_secs(300);

/// The scenarios, in the order they run. `--only` takes these names or a
/// prefix up to a dash (`e2e` selects the three e2e runs).
const SCENARIOS: &[&str] = &[
    "smtp-source",
    "lettre",
    "amqp",
    "e2e-sqlite",
    "e2e-postgres",
    "e2e-postgres-x2",
    "ingest-postgres",
    "fanout-sqlite",
    "fanout-postgres",
    "latency-sqlite",
    "latency-postgres",
    "backlog-postgres",
];

const USAGE: &str = "\
usage: tests/bench/run [--quick] [--only NAME[,NAME]] [SIZES]
   or: cargo bench --locked --bench throughput -- --notifier target/release/notifier [...]

  --quick                small sizes: a smoke run of a minute or two
  --only NAME[,NAME]     run only these (a name or its prefix before a dash):
                         smtp-source lettre amqp e2e-sqlite e2e-postgres
                         e2e-postgres-x2 ingest-postgres fanout-sqlite
                         fanout-postgres latency-sqlite latency-postgres
                         backlog-postgres
  --notifier PATH        the notifier binary (default: target/release/notifier)
  --out DIR              results directory (default: target/bench)
  --seed N               seed of the generated directory (default 7)
sizes (flag or environment variable; defaults full / --quick):
  --raw-mails N          BENCH_RAW_MAILS       mails per raw SMTP run (20000 / 2000)
  --amqp-msgs N          BENCH_AMQP_MSGS       messages of the raw AMQP run (20000 / 2000)
  --events N             BENCH_EVENTS          events (practices) of e2e and ingest (10000 / 300)
  --fanout-users N       BENCH_FANOUT_USERS    users of the fan-out practice (5000 / 500)
  --latency-rate N       BENCH_LATENCY_RATE    events per second of the latency run (200 / 50)
  --latency-secs N       BENCH_LATENCY_SECS    its duration in seconds (30 / 5)
  --backlog-events N     BENCH_BACKLOG_EVENTS  events x 5 users of the backlog run (20000 / 1000)
";

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Sizes {
    raw_mails: usize,
    amqp_msgs: usize,
    events: usize,
    fanout_users: usize,
    latency_rate: usize,
    latency_secs: usize,
    backlog_events: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                raw_mails: 2_000,
                amqp_msgs: 2_000,
                events: 300,
                fanout_users: 500,
                latency_rate: 50,
                latency_secs: 5,
                backlog_events: 1_000,
            }
        } else {
            Self {
                raw_mails: 20_000,
                amqp_msgs: 20_000,
                events: 10_000,
                fanout_users: 5_000,
                latency_rate: 200,
                latency_secs: 30,
                backlog_events: 20_000,
            }
        }
    }

    /// The size fields by flag name, for the parser.
    fn field(&mut self, flag: &str) -> Option<&mut usize> {
        Some(match flag {
            "raw-mails" => &mut self.raw_mails,
            "amqp-msgs" => &mut self.amqp_msgs,
            "events" => &mut self.events,
            "fanout-users" => &mut self.fanout_users,
            "latency-rate" => &mut self.latency_rate,
            "latency-secs" => &mut self.latency_secs,
            "backlog-events" => &mut self.backlog_events,
            _ => return None,
        })
    }
}

const SIZE_FLAGS: &[&str] = &[
    "raw-mails",
    "amqp-msgs",
    "events",
    "fanout-users",
    "latency-rate",
    "latency-secs",
    "backlog-events",
];

#[derive(Debug)]
struct Opts {
    quick: bool,
    only: Vec<String>,
    notifier: PathBuf,
    out: PathBuf,
    seed: u64,
    sizes: Sizes,
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target"))
}

fn parse_args() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut sizes = Sizes::new(quick);
    // The environment first, then the flags win over it.
    for flag in SIZE_FLAGS {
        let var = format!("BENCH_{}", flag.replace('-', "_").to_uppercase());
        if let Ok(v) = std::env::var(&var) {
            *sizes.field(flag).expect("listed flag") = v
                .parse()
                .map_err(|_| format!("{var}: expected a whole number, got {v:?}"))?;
        }
    }
    let mut o = Opts {
        quick,
        only: Vec::new(),
        notifier: target_dir().join("release/notifier"),
        out: target_dir().join("bench"),
        seed: 7,
        sizes,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            // `cargo bench` passes --bench to a harness-less bench.
            "--quick" | "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            "--only" => {
                for n in value("--only")?.split(',').filter(|n| !n.is_empty()) {
                    if !SCENARIOS.iter().any(|s| selects(n, s)) {
                        return Err(format!("--only: no scenario is called {n:?}"));
                    }
                    o.only.push(n.to_owned());
                }
            }
            "--notifier" => o.notifier = PathBuf::from(value("--notifier")?),
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--seed" => {
                o.seed = value("--seed")?
                    .parse()
                    .map_err(|_| "--seed: expected a whole number".to_owned())?
            }
            flag if flag.starts_with("--") && SIZE_FLAGS.contains(&&flag[2..]) => {
                let v = value(flag)?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("{flag}: expected a whole number, got {v:?}"))?;
                if n == 0 {
                    return Err(format!("{flag}: must be at least 1"));
                }
                *o.sizes.field(&flag[2..]).expect("checked") = n;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// `sel` selects `name` when it is the name or its prefix before a dash.
fn selects(sel: &str, name: &str) -> bool {
    name == sel || name.starts_with(&format!("{sel}-"))
}

// ---------------------------------------------------------------- main

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = preflight(&opts) {
        eprintln!("bench: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping the run's future on Ctrl-C drops its guards: processes,
    // vhosts, databases and temp dirs go away as on a normal end.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (cleaned up)")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Finds a program on PATH or in the sbin directories (Postfix's tools are
/// in /usr/sbin, which is not on every user's PATH).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What must be there before anything starts; each miss exits 2.
fn preflight(o: &Opts) -> Result<(), String> {
    if which("smtp-sink").is_none() || which("smtp-source").is_none() {
        return Err("Postfix's smtp-sink and smtp-source are missing; install them with: apt-get install -y postfix".into());
    }
    if which("rabbitmqctl").is_none() {
        return Err("rabbitmqctl is missing: the benchmark needs the local RabbitMQ (127.0.0.1:5672, guest/guest) and its rabbitmqctl to make a vhost of its own".into());
    }
    if which("psql").is_none() {
        return Err("psql is missing: the benchmark needs the local PostgreSQL (127.0.0.1:5432, user postgres, trust) and psql to make databases of its own (apt-get install -y postgresql-client)".into());
    }
    if !o.notifier.is_file() {
        return Err(format!(
            "no notifier binary at {}: build it with `cargo build --release --locked --bin notifier` (tests/bench/run does), or pass --notifier PATH",
            o.notifier.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- guards

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("notifier-bench-{tag}-{}", short_id()));
        std::fs::create_dir_all(&p)
            .with_context(|| format!("cannot create the temp dir {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) on drop if it still runs.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A RabbitMQ vhost of the benchmark's own, deleted on drop.
struct Vhost(String);

impl Vhost {
    fn create(tag: &str) -> Result<Self> {
        let name = format!("notifier-bench-{tag}-{}", short_id());
        run_cmd(
            Command::new("rabbitmqctl").args(["-q", "add_vhost", &name]),
            "rabbitmqctl add_vhost (is RabbitMQ running, and may this user run rabbitmqctl?)",
        )?;
        let v = Self(name);
        run_cmd(
            Command::new("rabbitmqctl").args([
                "-q",
                "set_permissions",
                "-p",
                &v.0,
                "guest",
                ".*",
                ".*",
                ".*",
            ]),
            "rabbitmqctl set_permissions",
        )?;
        Ok(v)
    }

    fn url(&self) -> String {
        format!("{AMQP_BASE}/{}", self.0)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A PostgreSQL database of the benchmark's own, dropped on drop.
struct PgDb(String);

impl PgDb {
    fn create(tag: &str) -> Result<Self> {
        let name = format!("notifier_bench_{}_{}", tag.replace('-', "_"), short_id());
        psql(&format!("CREATE DATABASE {name}")).context(
            "cannot create a database (is PostgreSQL running on 127.0.0.1:5432 with trust auth for postgres?)",
        )?;
        Ok(Self(name))
    }

    /// Over TCP, or over the Unix socket in `BENCH_PG_SOCKET` (a directory
    /// such as /var/run/postgresql): sqlx sets no `TCP_NODELAY` on
    /// PostgreSQL connections, so the two differ (docs/benchmarks.md).
    fn url(&self) -> String {
        match std::env::var("BENCH_PG_SOCKET") {
            Ok(dir) if !dir.is_empty() => {
                format!("postgres://{PG_USER}@localhost/{}?host={dir}", self.0)
            }
            _ => format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{}", self.0),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // FORCE: the benchmark's own pool may still hold a connection.
        let _ = psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

fn psql(sql: &str) -> Result<String> {
    run_cmd(
        Command::new("psql").args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-c",
            sql,
        ]),
        "psql",
    )
}

// ---------------------------------------------------------------- helpers

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Milliseconds since the epoch with the sub-millisecond part.
fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

/// Runs a command to its end; a failure names `what` and shows stderr.
fn run_cmd(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 1500)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim_end();
    match s.char_indices().rev().nth(max) {
        Some((i, _)) => format!("...{}", &s[i..]),
        None => s.to_owned(),
    }
}

fn free_port() -> Result<u16> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Clock ticks per second of /proc/PID/stat's utime and stime.
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `/proc/PID/status` field in kB (VmRSS:, VmHWM:).
fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields start after its ')'.
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / clk_tck())
}

async fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---------------------------------------------------------------- SMTP sink

/// Postfix's `smtp-sink` on a free loopback port: accepts and discards.
struct Sink {
    _proc: Proc,
    port: u16,
}

impl Sink {
    async fn start() -> Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(which("smtp-sink").expect("preflight checked"));
        // smtp-sink refuses to run as root without a user to switch to.
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .arg(format!("127.0.0.1:{port}"))
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start smtp-sink")?;
        let mut p = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Some(st) = p.0.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = p.0.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("smtp-sink exited at start ({st}): {}", tail(&err, 500));
            }
            if Instant::now() > deadline {
                bail!("smtp-sink does not accept connections on 127.0.0.1:{port} after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { _proc: p, port })
    }
}

// ---------------------------------------------------------------- workload

/// A generated directory: practices (AGB codes) with their users. The
/// practice's first user has `contracteren`, is tekenbevoegd and its contact
/// person, so T is never empty; each other user has `contracteren` with the
/// given probability (else `uitvragen`). A `contract.voorstel_aangeboden`
/// then makes exactly one mail per user with `contracteren` (each user at an
/// address of their own; no `beheer.geen_tekenbevoegde`). With 1 to 6 users
/// and a third of the others with the right this is the issue's workload:
/// about 1.84 mails per event (18,411 for 10,000 events there).
struct Directory {
    /// Per practice: its AGB code and, per user, whether they have `contracteren`.
    practices: Vec<(String, Vec<bool>)>,
}

impl Directory {
    fn generate(
        rng: &mut StdRng,
        practices: usize,
        mut users: impl FnMut(&mut StdRng) -> usize,
        others_with_right: f64,
    ) -> Self {
        Self {
            practices: (0..practices)
                .map(|i| {
                    let n = users(rng).max(1);
                    let rights = (0..n)
                        .map(|j| j == 0 || rng.random_bool(others_with_right))
                        .collect();
                    (format!("04{i:06}"), rights)
                })
                .collect(),
        }
    }

    fn users(&self) -> usize {
        self.practices.iter().map(|p| p.1.len()).sum()
    }

    /// Mails the workload must produce (one per user with the right).
    fn mails(&self) -> usize {
        self.practices
            .iter()
            .map(|p| p.1.iter().filter(|r| **r).count())
            .sum()
    }

    /// `gebruiker.bijgewerkt` data objects, one a line, for `directory import`.
    fn jsonl(&self, rng: &mut StdRng) -> String {
        let mut out = String::new();
        let mut k = 0u64;
        for (agb, rights) in &self.practices {
            for (j, right) in rights.iter().enumerate() {
                k += 1;
                let line = serde_json::json!({
                    "gebruikersnummer": format!("1{k:013}"),
                    "naam": format!("Gebruiker {k}"),
                    "email": format!("gebruiker{j}@p{agb}.bench.example"),
                    "status": "actief",
                    "koppelingen": [{
                        "agb_code": agb,
                        "rechten": [if *right { "contracteren" } else { "uitvragen" }],
                        "tekenbevoegd": j == 0 || rng.random_bool(0.3),
                        "contactpersoon": j == 0,
                    }],
                    "versie": 1,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
        out
    }

    /// One `contract.voorstel_aangeboden` per practice: (event id, body).
    fn events(&self) -> Vec<(String, Vec<u8>)> {
        self.practices
            .iter()
            .enumerate()
            .map(|(i, (agb, _))| module_event(agb, i))
            .collect()
    }
}

fn module_event(agb: &str, i: usize) -> (String, Vec<u8>) {
    let id = uuid::Uuid::new_v4().to_string();
    let now = Utc::now();
    let deadline = now
        .date_naive()
        .checked_add_days(chrono::Days::new(30))
        .expect("a date 30 days ahead");
    let body = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/zorginkoopportaal/contracteermodule",
        "type": EVENT_TYPE,
        "time": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": {
            "agb_code": agb,
            "zorgverzekeraar": {"uzovi": "3311", "naam": "Zorgverzekeraar Noord"},
            "url": format!("https://zip.example.nl/contract/C-2027-{i:06}"),
            "contract_id": format!("C-2027-{i:06}"),
            "contract_naam": "Overeenkomst fysiotherapie 2027",
            "jaar": 2027,
            "uiterste_acceptatiedatum": deadline.format("%Y-%m-%d").to_string(),
        }
    });
    (id, body.to_string().into_bytes())
}

/// The formatted bytes of one mail exactly as the worker builds it for the
/// workload's event (same templates, MIME and encoding), so the raw runs
/// send messages of the worker's size.
fn sample_mail() -> Result<Vec<u8>> {
    use notifier::domain::delivery::MailKind;
    use notifier::domain::event::{EventBody, parse_event};
    let settings = Settings::defaults();
    let rules = notifier::app::validation_rules(&settings);
    let (_, body) = module_event("04000001", 1);
    let ev = parse_event(&body, &rules)
        .map_err(|r| anyhow!("the workload's event is invalid: {}", r.reason))?;
    let EventBody::Module(m) = ev.body else {
        bail!("the workload's event is not a module event");
    };
    let templates = notifier::templates::Templates::load(None)?;
    let kind = MailKind::Module(m.event_type);
    // No organisatie.bijgewerkt in the workload: mails name the AGB code.
    let addressee = notifier::templates::samples::planned_addressee(kind);
    let common =
        notifier::mail::context::Common::at(chrono::Utc::now(), &settings.portal.url, &addressee);
    let ctx =
        notifier::mail::context::module_context(kind.as_str(), &m, m.agb_code.as_str(), &common);
    let mail = templates.render(kind, &ctx)?;
    let bytes = notifier::mail::message::build(
        &settings.smtp.from,
        "gebruiker1@p04000001.bench.example",
        &mail,
        &format!("{}@zip.example.nl", uuid::Uuid::new_v4()),
    )?;
    Ok(bytes)
}

// ---------------------------------------------------------------- AMQP

/// A publisher with confirms on its own connection.
struct Publisher {
    _conn: Connection,
    ch: Channel,
    exchange: String,
}

impl Publisher {
    async fn connect(url: &str, exchange: &str) -> Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .context("cannot connect to RabbitMQ on 127.0.0.1:5672 as guest")?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            _conn: conn,
            ch,
            exchange: exchange.to_owned(),
        })
    }

    /// Hands one persistent message to the broker; the confirm comes later.
    async fn start(&self, id: &str, body: &[u8]) -> Result<PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/cloudevents+json"))
            .with_message_id(ShortString::from(id));
        Ok(self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                EVENT_TYPE.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?)
    }

    /// Publishes all, with at most `WINDOW` confirms outstanding (waiting
    /// for each in turn would measure the round trip, not the broker).
    async fn publish_all(&self, msgs: &[(String, Vec<u8>)]) -> Result<()> {
        const WINDOW: usize = 1000;
        let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
        for (id, body) in msgs {
            if pending.len() == WINDOW {
                confirmed(pending.pop_front().expect("full window").await?)?;
            }
            pending.push_back(self.start(id, body).await?);
        }
        for c in pending {
            confirmed(c.await?)?;
        }
        Ok(())
    }
}

fn confirmed(c: Confirmation) -> Result<()> {
    if c.is_ack() {
        Ok(())
    } else {
        bail!("RabbitMQ did not confirm a publish (nack): is the vhost's disk or memory alarm on?")
    }
}

async fn declare_topology(url: &str, amqp: &notifier::config::AmqpSettings) -> Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("cannot connect to RabbitMQ on 127.0.0.1:5672 as guest")?;
    let ch = conn.create_channel().await?;
    notifier::broker::topology::declare(&ch, amqp)
        .await
        .context("cannot declare the notifier's exchange and queues")?;
    let _ = conn.close(200, "bench".into()).await;
    Ok(())
}

/// Messages ready in `queue`.
async fn queue_depth(ch: &Channel, queue: &str) -> Result<u32> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue {queue} is missing"))?;
    Ok(q.message_count())
}

// ---------------------------------------------------------------- world

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// One scenario's world: its temp dir, vhost, database and config file.
/// Fields drop in order: the store's pool before the database.
struct World {
    store: Store,
    db_url: String,
    config: PathBuf,
    amqp_url: String,
    notifier: PathBuf,
    _db: Option<PgDb>,
    _vhost: Vhost,
    dir: TempDir,
}

impl World {
    async fn new(ctx: &Ctx, tag: &str, backend: Backend) -> Result<Self> {
        let dir = TempDir::new(tag)?;
        let vhost = Vhost::create(tag)?;
        let db = match backend {
            Backend::Postgres => Some(PgDb::create(tag)?),
            Backend::Sqlite => None,
        };
        let db_url = match &db {
            Some(d) => d.url(),
            None => format!("sqlite://{}", dir.0.join("bench.db").display()),
        };
        // Everything the worker needs besides http.listen (per instance)
        // and dispatch.enabled (per start), which go in its environment.
        // max_connections: the documented floor smtp.concurrency + 3, plus one.
        let toml = format!(
            "[amqp]\nurl = \"{amqp}\"\n\
             [database]\nurl = \"{db_url}\"\nmax_connections = {maxc}\n\
             [smtp]\nurl = \"smtp://127.0.0.1:{port}\"\nconcurrency = {CONNECTIONS}\nmax_rate = 0\n\
             [log]\nformat = \"json\"\nlevel = \"warn\"\n",
            amqp = vhost.url(),
            maxc = CONNECTIONS + 4,
            port = ctx.sink_port,
        );
        let config = dir.0.join("config.toml");
        std::fs::write(&config, toml)?;
        cli(&ctx.opts.notifier, &config, &["migrate"]).context("notifier migrate")?;
        let store = Store::connect(&db_url, 2)
            .await
            .with_context(|| format!("cannot open the scenario's database {db_url}"))?;
        // The events are published before any worker runs, so the queue
        // must exist first (the worker declares the same topology again).
        declare_topology(&vhost.url(), &Settings::defaults().amqp).await?;
        Ok(Self {
            store,
            amqp_url: vhost.url(),
            db_url,
            config,
            notifier: ctx.opts.notifier.clone(),
            _db: db,
            _vhost: vhost,
            dir,
        })
    }

    fn import(&self, jsonl: &str) -> Result<()> {
        let f = self.dir.0.join("directory.jsonl");
        std::fs::write(&f, jsonl)?;
        cli(
            &self.notifier,
            &self.config,
            &["directory", "import", f.to_str().expect("utf-8 temp path")],
        )
        .context("notifier directory import")?;
        Ok(())
    }

    async fn publisher(&self) -> Result<Publisher> {
        Publisher::connect(&self.amqp_url, &Settings::defaults().amqp.exchange).await
    }

    /// Publishes all with confirms and checks the queue holds them.
    async fn publish(&self, msgs: &[(String, Vec<u8>)]) -> Result<()> {
        let p = self.publisher().await?;
        p.publish_all(msgs).await?;
        let depth = queue_depth(&p.ch, &Settings::defaults().amqp.queue).await?;
        if (depth as usize) < msgs.len() {
            bail!(
                "published {} events with confirms but the queue holds {depth}: the binding of the notifier's queue is missing",
                msgs.len()
            );
        }
        Ok(())
    }

    fn spawn(&self, name: &str, dispatch: bool) -> Result<Worker> {
        let http = format!("127.0.0.1:{}", free_port()?);
        // BENCH_LOG_DIR keeps each worker's log there (with BENCH_LOG_LEVEL,
        // e.g. `debug` for the per-round timings), for profiling a figure.
        let log = match std::env::var_os("BENCH_LOG_DIR") {
            Some(d) => PathBuf::from(d).join(format!(
                "{}-{name}.log",
                self.dir.0.file_name().unwrap_or_default().to_string_lossy()
            )),
            None => self.dir.0.join(format!("{name}.log")),
        };
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&self.notifier);
        clean_env(&mut cmd);
        cmd.args(["--config", self.config.to_str().expect("utf-8"), "run"])
            .env("NOTIFIER_HTTP__LISTEN", &http)
            .env("NOTIFIER_DISPATCH__ENABLED", dispatch.to_string())
            .env(
                "NOTIFIER_LOG__LEVEL",
                std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let started = Instant::now();
        let started_ms = now_ms();
        let child = cmd.spawn().context("cannot start notifier run")?;
        Ok(Worker {
            pid: child.id(),
            proc: Proc(child),
            name: name.to_owned(),
            http,
            log,
            started,
            started_ms,
        })
    }

    async fn count(&self, sql: &'static str) -> Result<i64> {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.store.pool())
            .await
            .with_context(|| format!("query failed: {sql}"))
    }

    async fn max_ms(&self, sql: &'static str) -> Result<i64> {
        sqlx::query_scalar::<_, Option<i64>>(sql)
            .fetch_one(self.store.pool())
            .await
            .with_context(|| format!("query failed: {sql}"))?
            .with_context(|| format!("no rows for: {sql}"))
    }

    /// Waits until `sql` counts `target`, while the workers live; fails
    /// when the count stops moving for [`NO_PROGRESS`].
    async fn wait_count(
        &self,
        what: &str,
        workers: &mut [Worker],
        sql: &'static str,
        target: i64,
        every: Duration,
    ) -> Result<Instant> {
        let mut last = -1;
        let mut moved = Instant::now();
        loop {
            for w in workers.iter_mut() {
                w.alive()?;
            }
            let n = self.count(sql).await?;
            if n >= target {
                return Ok(Instant::now());
            }
            if n != last {
                last = n;
                moved = Instant::now();
            } else if moved.elapsed() > NO_PROGRESS {
                let logs: String = workers
                    .iter()
                    .map(|w| format!("\n--- {} log:\n{}", w.name, w.log_tail()))
                    .collect();
                bail!(
                    "{what}: stuck at {n} of {target} for {} s ({}){logs}",
                    NO_PROGRESS.as_secs(),
                    self.db_url
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The deliveries must be exactly what the workload plans, all sent.
    async fn check_all_sent(&self, expected: usize) -> Result<()> {
        let total = self.count("SELECT COUNT(*) FROM deliveries").await?;
        let sent = self
            .count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
            .await?;
        if total != expected as i64 || sent != total {
            bail!(
                "the workload should make {expected} deliveries, all sent; the database has {total}, {sent} sent (check the directory generator against the recipient rules)"
            );
        }
        Ok(())
    }

    /// Per-mail `sent_at` relative to `t0`, as a cumulative CSV series.
    async fn write_sent_series(&self, t0_ms: i64, file: &Path) -> Result<()> {
        let mut at: Vec<i64> =
            sqlx::query_scalar::<_, i64>("SELECT sent_at FROM deliveries WHERE status = 'sent'")
                .fetch_all(self.store.pool())
                .await?;
        at.sort_unstable();
        let mut csv = String::from("ms_since_start,mails_sent\n");
        for (i, t) in at.iter().enumerate() {
            let _ = writeln!(csv, "{},{}", t - t0_ms, i + 1);
        }
        std::fs::write(file, csv).with_context(|| format!("cannot write {}", file.display()))
    }
}

/// A subprocess sees no NOTIFIER_* variable of the caller's: unknown keys
/// are errors, and stray settings would change what is measured.
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NOTIFIER_") {
            cmd.env_remove(k);
        }
    }
}

fn cli(bin: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(bin);
    clean_env(&mut cmd);
    cmd.arg("--config").arg(config).args(args);
    run_cmd(&mut cmd, &format!("notifier {}", args.join(" ")))
}

/// One `notifier run` process.
struct Worker {
    proc: Proc,
    pid: u32,
    name: String,
    http: String,
    log: PathBuf,
    started: Instant,
    started_ms: i64,
}

impl Worker {
    fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            3000,
        )
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(st) = self.proc.0.try_wait()? {
            bail!(
                "notifier run ({}) exited with {st}; its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits until `/readyz` says the worker consumes from the queue.
    async fn wait_consuming(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.alive()?;
            let body = http_get(&self.http, "/readyz").await.unwrap_or_default();
            if body.contains("\"consuming\"") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "notifier run ({}) does not consume after 60 s; /readyz: {}\n{}",
                    self.name,
                    tail(&body, 300),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn cpu_secs(&self) -> Result<f64> {
        proc_cpu_secs(self.pid)
    }

    fn hwm_kb(&self) -> u64 {
        proc_kb(self.pid, "VmHWM:").unwrap_or(0)
    }

    /// SIGTERM and wait for the graceful end; returns how long it took.
    /// A shutdown slower than `shutdown.grace` (20 s) is a finding, so it
    /// is reported, and only one past [`STOP_LIMIT`] fails the scenario.
    async fn stop(mut self) -> Result<Duration> {
        self.alive()?;
        run_cmd(
            Command::new("kill").args(["-TERM", &self.pid.to_string()]),
            "kill -TERM",
        )?;
        let t = Instant::now();
        loop {
            if let Some(st) = self.proc.0.try_wait()? {
                if !st.success() {
                    bail!(
                        "notifier run ({}) ended with {st} after SIGTERM; its log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                if t.elapsed() > Duration::from_secs(25) {
                    println!(
                        "   warning: notifier run ({}) took {:.0} s to stop after SIGTERM (shutdown.grace is 20 s)",
                        self.name,
                        t.elapsed().as_secs_f64()
                    );
                }
                return Ok(t.elapsed());
            }
            if t.elapsed() > STOP_LIMIT {
                // The guard kills it.
                bail!(
                    "notifier run ({}) still runs {} s after SIGTERM (shutdown.grace is 20 s); its log:\n{}",
                    self.name,
                    STOP_LIMIT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------- results

/// One line of the results table.
struct Row {
    id: &'static str,
    what: String,
    backend: &'static str,
    n: usize,
    unit: &'static str,
    secs: f64,
    /// Whether the rate is mails/s to compare with the raw limits.
    mails: bool,
    cpu_per_1k: Option<f64>,
    rss_kb: Option<u64>,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

struct LatencyRow {
    backend: &'static str,
    mails: usize,
    target_rate: usize,
    achieved_rate: f64,
    /// Mails per second the published events ask for.
    offered_mails: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// What the scenarios share.
struct Ctx {
    opts: Opts,
    sink_port: u16,
    mail: Arc<Vec<u8>>,
    rows: Vec<Row>,
    latency: Vec<LatencyRow>,
    failures: Vec<String>,
}

impl Ctx {
    fn limit(&self, id: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.id == id).map(Row::rate)
    }
}

fn mib(kb: u64) -> String {
    format!("{:.0}", kb as f64 / 1024.0)
}

fn machine_info() -> Vec<(String, String)> {
    let sh = |c: &mut Command| {
        c.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let repo = repo_dir();
    let mut commit =
        sh(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["rev-parse", "--short", "HEAD"]));
    if sh(Command::new("git").arg("-C").arg(&repo).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])) != "unknown"
    {
        commit.push_str(" (with uncommitted changes)");
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    vec![
        (
            "date".into(),
            Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        ("commit".into(), commit),
        (
            "nproc".into(),
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "unknown".into()),
        ),
        ("cpu".into(), cpu),
        ("kernel".into(), sh(Command::new("uname").arg("-r"))),
        ("load average at start".into(), loadavg()),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn render_results(ctx: &Ctx, info: &[(String, String)], took: Duration) -> String {
    let s = &ctx.opts.sizes;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Throughput benchmark (`tests/bench/run{}`)\n",
        if ctx.opts.quick { " --quick" } else { "" }
    );
    for (k, v) in info {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "- load average at end: {}", loadavg());
    let _ = writeln!(md, "- run took {:.0} s", took.as_secs_f64());
    let _ = writeln!(
        md,
        "- sizes: raw SMTP {} mails of {} bytes, AMQP {} messages of {} bytes, e2e/ingest {} events, fan-out {} users, latency {} events/s for {} s, backlog {} events x 5 users",
        s.raw_mails,
        ctx.mail.len(),
        s.amqp_msgs,
        module_event("04000001", 1).1.len(),
        s.events,
        s.fanout_users,
        s.latency_rate,
        s.latency_secs,
        s.backlog_events
    );
    let _ = writeln!(
        md,
        "- worker settings: smtp.concurrency {CONNECTIONS}, smtp.max_rate 0, database.max_connections {}, other settings default (dispatch.batch_size 500, dispatch.idle_poll 1s (woken by ingest), amqp.prefetch 200), JSON logs at warn\n",
        CONNECTIONS + 4
    );
    let d = ctx.limit("1b");
    let l = ctx.limit("2");
    let ratio = |r: &Row, lim: Option<f64>| match (r.mails, lim) {
        (true, Some(lim)) if !["1a", "1b", "2"].contains(&r.id) => {
            format!("{:.0} %", 100.0 * r.rate() / lim)
        }
        _ => String::new(),
    };
    let _ = writeln!(
        md,
        "| # | measurement | backend | n | time s | rate | vs smtp-source -d | vs lettre | CPU s / 1k mails | peak RSS MiB | notes |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &ctx.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {:.0} {} | {} | {} | {} | {} | {} |",
            r.id,
            r.what,
            r.backend,
            r.n,
            r.secs,
            r.rate(),
            r.unit,
            ratio(r, d),
            ratio(r, l),
            r.cpu_per_1k.map(|c| format!("{c:.2}")).unwrap_or_default(),
            r.rss_kb.map(mib).unwrap_or_default(),
            r.note
        );
    }
    if !ctx.latency.is_empty() {
        let _ = writeln!(
            md,
            "\n### 7. Latency, publish to relay acceptance (`deliveries.sent_at`)\n"
        );
        let _ = writeln!(
            md,
            "| backend | mails | events/s asked | events/s published | mails/s offered | p50 ms | p90 ms | p99 ms | max ms |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &ctx.latency {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.backend,
                r.mails,
                r.target_rate,
                r.achieved_rate,
                r.offered_mails,
                r.p50,
                r.p90,
                r.p99,
                r.max
            );
        }
    }
    if !ctx.latency.is_empty() {
        let _ = writeln!(
            md,
            "\nWhere the mails/s offered exceed the backend's end-to-end rate (4), a queue builds up during the run and the latency mostly measures that queue; `--only latency --latency-rate N` measures a lower rate. Idle, the dispatcher looks for due mail every `dispatch.idle_poll` (1 s)."
        );
    }
    if !ctx.failures.is_empty() {
        let _ = writeln!(md, "\n### Failed scenarios\n");
        for f in &ctx.failures {
            let _ = writeln!(md, "- {}", f.lines().next().unwrap_or(f));
        }
    }
    md
}

// ---------------------------------------------------------------- run

async fn run(opts: Opts) -> Result<bool> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let info = machine_info();
    for (k, v) in &info {
        println!("{k}: {v}");
    }
    let sink = Sink::start().await?;
    let mut ctx = Ctx {
        sink_port: sink.port,
        mail: Arc::new(
            sample_mail().context("cannot build a sample mail with the notifier's templates")?,
        ),
        opts,
        rows: Vec::new(),
        latency: Vec::new(),
        failures: Vec::new(),
    };
    println!(
        "one mail of the workload: {} bytes; the event: {} bytes",
        ctx.mail.len(),
        module_event("04000001", 1).1.len()
    );
    for &name in SCENARIOS {
        if !ctx.opts.only.is_empty() && !ctx.opts.only.iter().any(|s| selects(s, name)) {
            continue;
        }
        println!("\n== {name}");
        // A series of an earlier run must not pass for this run's.
        for stale in [format!("{name}.csv"), format!("{name}-rss.csv")] {
            let _ = std::fs::remove_file(ctx.opts.out.join(stale));
        }
        let t = Instant::now();
        let r = match name {
            "smtp-source" => smtp_source(&mut ctx).await,
            "lettre" => lettre_loop(&mut ctx).await,
            "amqp" => amqp_raw(&mut ctx).await,
            "e2e-sqlite" => e2e(&mut ctx, Backend::Sqlite, 1).await,
            "e2e-postgres" => e2e(&mut ctx, Backend::Postgres, 1).await,
            "e2e-postgres-x2" => e2e(&mut ctx, Backend::Postgres, 2).await,
            "ingest-postgres" => ingest(&mut ctx).await,
            "fanout-sqlite" => fanout(&mut ctx, Backend::Sqlite).await,
            "fanout-postgres" => fanout(&mut ctx, Backend::Postgres).await,
            "latency-sqlite" => latency(&mut ctx, Backend::Sqlite).await,
            "latency-postgres" => latency(&mut ctx, Backend::Postgres).await,
            "backlog-postgres" => backlog(&mut ctx).await,
            other => unreachable!("scenario {other} has no function"),
        };
        match r {
            Ok(()) => println!("   ({:.0} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("bench: scenario {name} failed: {e:#}");
                ctx.failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    let md = render_results(&ctx, &info, started.elapsed());
    println!("\n{md}");
    let file = ctx.opts.out.join("results.md");
    std::fs::write(&file, &md).with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "results: {} (CSV series beside it; plots: tests/bench/plot.py)",
        file.display()
    );
    Ok(ctx.failures.is_empty())
}

fn push(ctx: &mut Ctx, r: Row) {
    println!(
        "   {} {}: {} in {:.2} s = {:.0} {}{}",
        r.what,
        r.backend,
        r.n,
        r.secs,
        r.rate(),
        r.unit,
        r.rss_kb
            .map(|kb| format!(", peak RSS {} MiB", mib(kb)))
            .unwrap_or_default()
    );
    ctx.rows.push(r);
}

// ---------------------------------------------------------------- 1, 2, 3

async fn smtp_source(ctx: &mut Ctx) -> Result<()> {
    let dir = TempDir::new("smtp-source")?;
    // smtp-source -F appends CRLF to each line itself: give it LF lines.
    let file = dir.0.join("mail.txt");
    let text = String::from_utf8_lossy(&ctx.mail).replace("\r\n", "\n");
    std::fs::write(&file, text)?;
    let n = ctx.opts.sizes.raw_mails;
    for (id, reuse) in [("1a", false), ("1b", true)] {
        let mut cmd = Command::new(which("smtp-source").expect("preflight checked"));
        cmd.args(["-s", &CONNECTIONS.to_string(), "-m", &n.to_string()])
            .arg("-F")
            .arg(&file)
            .args(["-f", RAW_FROM, "-t", RAW_TO, "-M", "bench.localdomain"]);
        if reuse {
            cmd.arg("-d");
        }
        cmd.arg(format!("127.0.0.1:{}", ctx.sink_port));
        let t = Instant::now();
        run_cmd(&mut cmd, "smtp-source")?;
        let secs = t.elapsed().as_secs_f64();
        push(
            ctx,
            Row {
                id,
                what: if reuse {
                    format!("smtp-source -s {CONNECTIONS} -d (connections reused)")
                } else {
                    format!("smtp-source -s {CONNECTIONS} (a connection per mail)")
                },
                backend: "",
                n,
                unit: "mails/s",
                secs,
                mails: true,
                cpu_per_1k: None,
                rss_kb: None,
                note: String::new(),
            },
        );
    }
    Ok(())
}

async fn lettre_loop(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.sizes.raw_mails;
    let next = Arc::new(AtomicUsize::new(0));
    let envelope = Envelope::new(Some(RAW_FROM.parse()?), vec![RAW_TO.parse()?])?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (next, mail, envelope, port) = (
            next.clone(),
            ctx.mail.clone(),
            envelope.clone(),
            ctx.sink_port,
        );
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            // The point of the worker's own pool: without nodelay each mail
            // waits for the relay's delayed ACK.
            tcp.set_nodelay(true)?;
            let hello = ClientId::Domain("bench.localdomain".into());
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello).await?;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                conn.send(&envelope, &mail).await?;
            }
            conn.quit().await?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await?.context("lettre send loop against smtp-sink")?;
    }
    push(
        ctx,
        Row {
            id: "2",
            what: format!("lettre AsyncSmtpConnection, {CONNECTIONS} nodelay connections"),
            backend: "",
            n,
            unit: "mails/s",
            secs: t.elapsed().as_secs_f64(),
            mails: true,
            cpu_per_1k: None,
            rss_kb: None,
            note: String::new(),
        },
    );
    Ok(())
}

async fn amqp_raw(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.opts.sizes.amqp_msgs;
    let vhost = Vhost::create("amqp")?;
    let amqp = Settings::defaults().amqp;
    // The worker's own topology: a quorum queue with the same arguments.
    declare_topology(&vhost.url(), &amqp).await?;
    let (_, body) = module_event("04000001", 1);
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|_| (uuid::Uuid::new_v4().to_string(), body.clone()))
        .collect();
    let p = Publisher::connect(&vhost.url(), &amqp.exchange).await?;
    let t = Instant::now();
    p.publish_all(&msgs).await?;
    let publish_secs = t.elapsed().as_secs_f64();
    let depth = queue_depth(&p.ch, &amqp.queue).await?;
    if depth as usize != n {
        bail!("published {n} with confirms but the queue holds {depth}");
    }

    let conn = Connection::connect(&vhost.url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(amqp.prefetch, BasicQosOptions::default())
        .await?;
    let t = Instant::now();
    let mut consumer = ch
        .basic_consume(
            amqp.queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0;
    while got < n {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .map_err(|_| anyhow!("no message from RabbitMQ for 30 s after {got} of {n}"))?;
        let d = next.context("RabbitMQ cancelled the consumer")??;
        d.acker.ack(BasicAckOptions::default()).await?;
        got += 1;
    }
    let consume_secs = t.elapsed().as_secs_f64();
    let _ = conn.close(200, "bench".into()).await;
    for (id, what, secs) in [
        (
            "3a",
            "AMQP publish, persistent, confirms (1000 in flight)",
            publish_secs,
        ),
        (
            "3b",
            "AMQP consume and ack each (prefetch 200)",
            consume_secs,
        ),
    ] {
        push(
            ctx,
            Row {
                id,
                what: what.into(),
                backend: "quorum queue",
                n,
                unit: "msgs/s",
                secs,
                mails: false,
                cpu_per_1k: None,
                rss_kb: None,
                note: String::new(),
            },
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- 4, 5, 6

/// The e2e workload's directory: one practice per event, 1-6 users each.
fn e2e_directory(ctx: &Ctx) -> (Directory, String) {
    let mut rng = StdRng::seed_from_u64(ctx.opts.seed);
    let d = Directory::generate(
        &mut rng,
        ctx.opts.sizes.events,
        |r| r.random_range(1..=6),
        1.0 / 3.0,
    );
    let jsonl = d.jsonl(&mut rng);
    (d, jsonl)
}

async fn e2e(ctx: &mut Ctx, backend: Backend, instances: usize) -> Result<()> {
    let tag = if instances > 1 {
        format!("e2e-{}-x{instances}", backend.name())
    } else {
        format!("e2e-{}", backend.name())
    };
    let (dir, jsonl) = e2e_directory(ctx);
    let world = World::new(ctx, &tag, backend).await?;
    world.import(&jsonl)?;
    let events = dir.events();
    world.publish(&events).await?;
    let expected = dir.mails();
    println!(
        "   {} events published, {} users, {expected} mails expected; starting {instances} worker(s)",
        events.len(),
        dir.users()
    );
    let mut workers = Vec::new();
    for i in 0..instances {
        workers.push(world.spawn(&format!("worker{i}"), true)?);
    }
    let t0 = workers[0].started_ms;
    world
        .wait_count(
            "sent deliveries",
            &mut workers,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'",
            expected as i64,
            Duration::from_millis(200),
        )
        .await?;
    // Measured before SIGTERM: the shutdown is not part of the drain.
    let mut cpu = 0.0;
    let mut rss = 0;
    for w in &workers {
        cpu += w.cpu_secs()?;
        rss = rss.max(w.hwm_kb());
    }
    for w in workers {
        w.stop().await?;
    }
    world.check_all_sent(expected).await?;
    let end = world
        .max_ms("SELECT MAX(sent_at) FROM deliveries WHERE status = 'sent'")
        .await?;
    world
        .write_sent_series(t0, &ctx.opts.out.join(format!("{tag}.csv")))
        .await?;
    let secs = (end - t0) as f64 / 1000.0;
    push(
        ctx,
        Row {
            id: "4",
            what: format!(
                "end to end, {} x {EVENT_TYPE}{}",
                events.len(),
                if instances > 1 {
                    format!(", {instances} instances (CPU summed, RSS of the larger)")
                } else {
                    String::new()
                }
            ),
            backend: backend.name(),
            n: expected,
            unit: "mails/s",
            secs,
            mails: true,
            cpu_per_1k: Some(cpu / (expected as f64 / 1000.0)),
            rss_kb: Some(rss),
            note: "worker start to last sent_at".into(),
        },
    );
    Ok(())
}

async fn ingest(ctx: &mut Ctx) -> Result<()> {
    let (dir, jsonl) = e2e_directory(ctx);
    let world = World::new(ctx, "ingest-postgres", Backend::Postgres).await?;
    world.import(&jsonl)?;
    let events = dir.events();
    world.publish(&events).await?;
    let mut workers = vec![world.spawn("worker", false)?];
    let started = workers[0].started;
    let done = world
        .wait_count(
            "recorded events",
            &mut workers,
            "SELECT COUNT(*) FROM events",
            events.len() as i64,
            Duration::from_millis(100),
        )
        .await?;
    let secs = (done - started).as_secs_f64();
    let cpu = workers[0].cpu_secs()?;
    let rss = workers[0].hwm_kb();
    let w = workers.pop().expect("one worker");
    w.stop().await?;
    let deliveries = world.count("SELECT COUNT(*) FROM deliveries").await?;
    let accepted = world
        .count("SELECT COUNT(*) FROM events WHERE state = 'accepted'")
        .await?;
    if accepted != events.len() as i64 || deliveries != dir.mails() as i64 {
        bail!(
            "ingest should accept {} events with {} deliveries; the database has {accepted} accepted, {deliveries} deliveries",
            events.len(),
            dir.mails()
        );
    }
    push(
        ctx,
        Row {
            id: "5",
            what: "ingest only (dispatch.enabled = false)".into(),
            backend: "postgres",
            n: events.len(),
            unit: "events/s",
            secs,
            mails: false,
            cpu_per_1k: None,
            rss_kb: Some(rss),
            note: format!(
                "{:.0} deliveries/s planned; CPU {:.2} s per 1k events; start to last event visible (polled every 100 ms)",
                deliveries as f64 / secs,
                cpu / (events.len() as f64 / 1000.0)
            ),
        },
    );
    Ok(())
}

async fn fanout(ctx: &mut Ctx, backend: Backend) -> Result<()> {
    let users = ctx.opts.sizes.fanout_users;
    let mut rng = StdRng::seed_from_u64(ctx.opts.seed);
    let dir = Directory::generate(&mut rng, 1, |_| users, 1.0);
    let jsonl = dir.jsonl(&mut rng);
    let tag = format!("fanout-{}", backend.name());
    let world = World::new(ctx, &tag, backend).await?;
    world.import(&jsonl)?;
    world.publish(&dir.events()).await?;
    let mut workers = vec![world.spawn("worker", false)?];
    let started = workers[0].started;
    let done = world
        .wait_count(
            "deliveries of the fan-out event",
            &mut workers,
            "SELECT COUNT(*) FROM deliveries",
            users as i64,
            Duration::from_millis(50),
        )
        .await?;
    let secs = (done - started).as_secs_f64();
    let rss = workers[0].hwm_kb();
    workers.pop().expect("one worker").stop().await?;
    push(
        ctx,
        Row {
            id: "6",
            what: format!("fan-out: 1 event to {users} users (dispatch off)"),
            backend: backend.name(),
            n: users,
            unit: "deliveries/s",
            secs,
            mails: false,
            cpu_per_1k: None,
            rss_kb: Some(rss),
            note: "start to all deliveries visible (polled every 50 ms)".into(),
        },
    );
    Ok(())
}

// ---------------------------------------------------------------- 7, 8

async fn latency(ctx: &mut Ctx, backend: Backend) -> Result<()> {
    let rate = ctx.opts.sizes.latency_rate;
    let n = rate * ctx.opts.sizes.latency_secs;
    let mut rng = StdRng::seed_from_u64(ctx.opts.seed);
    let dir = Directory::generate(&mut rng, n, |r| r.random_range(1..=6), 1.0 / 3.0);
    let jsonl = dir.jsonl(&mut rng);
    let tag = format!("latency-{}", backend.name());
    let world = World::new(ctx, &tag, backend).await?;
    world.import(&jsonl)?;
    let events = dir.events();
    let expected = dir.mails();
    let mut workers = vec![world.spawn("worker", true)?];
    workers[0].wait_consuming().await?;
    let p = world.publisher().await?;
    println!("   publishing {n} events at {rate}/s ({expected} mails)");
    let mut published: HashMap<&str, f64> = HashMap::with_capacity(n);
    let mut confirms = Vec::with_capacity(n);
    let start = tokio::time::Instant::now();
    for (i, (id, body)) in events.iter().enumerate() {
        // The workload's schedule (a steady rate), not a synchronisation.
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        published.insert(id, now_ms_f64());
        confirms.push(p.start(id, body).await?);
        if i.is_multiple_of(rate) {
            workers[0].alive()?;
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let achieved = n as f64 / publish_secs;
    let t_pub0 = published.values().copied().fold(f64::INFINITY, f64::min);
    for c in confirms {
        confirmed(c.await?)?;
    }
    world
        .wait_count(
            "sent deliveries",
            &mut workers,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'",
            expected as i64,
            Duration::from_millis(200),
        )
        .await?;
    workers.pop().expect("one worker").stop().await?;
    world.check_all_sent(expected).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as::<_, (String, i64)>(
        "SELECT event_id, sent_at FROM deliveries WHERE status = 'sent'",
    )
    .fetch_all(world.store.pool())
    .await?;
    let mut series = Vec::with_capacity(rows.len());
    for (event, sent_at) in &rows {
        let at = published
            .get(event.as_str())
            .with_context(|| format!("a delivery of an event the run did not publish: {event}"))?;
        series.push((at - t_pub0, *sent_at as f64 - at));
    }
    let mut lat: Vec<f64> = series.iter().map(|s| s.1).collect();
    lat.sort_by(f64::total_cmp);
    series.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut csv = String::from("published_ms_since_start,latency_ms\n");
    for (at, l) in &series {
        let _ = writeln!(csv, "{at:.1},{l:.1}");
    }
    std::fs::write(ctx.opts.out.join(format!("{tag}.csv")), csv)?;
    let r = LatencyRow {
        backend: backend.name(),
        mails: lat.len(),
        target_rate: rate,
        achieved_rate: achieved,
        offered_mails: expected as f64 / publish_secs,
        p50: percentile(&lat, 50.0),
        p90: percentile(&lat, 90.0),
        p99: percentile(&lat, 99.0),
        max: lat.last().copied().unwrap_or(f64::NAN),
    };
    println!(
        "   latency {}: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} mails, {:.0} events/s published)",
        r.backend, r.p50, r.p90, r.p99, r.max, r.mails, r.achieved_rate
    );
    ctx.latency.push(r);
    Ok(())
}

async fn backlog(ctx: &mut Ctx) -> Result<()> {
    const USERS: usize = 5;
    let n = ctx.opts.sizes.backlog_events;
    let mut rng = StdRng::seed_from_u64(ctx.opts.seed);
    let dir = Directory::generate(&mut rng, n, |_| USERS, 1.0);
    let jsonl = dir.jsonl(&mut rng);
    let expected = dir.mails();
    let world = World::new(ctx, "backlog-postgres", Backend::Postgres).await?;
    world.import(&jsonl)?;
    world.publish(&dir.events()).await?;
    println!("   ingesting {n} events ({expected} deliveries) with dispatch off");
    let mut ingestor = vec![world.spawn("ingest", false)?];
    world
        .wait_count(
            "planned deliveries",
            &mut ingestor,
            "SELECT COUNT(*) FROM deliveries",
            expected as i64,
            Duration::from_millis(250),
        )
        .await?;
    let ingest_stop = ingestor.pop().expect("one worker").stop().await?;
    let pending = world
        .count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        .await?;
    if pending != expected as i64 {
        bail!("the backlog should hold {expected} pending deliveries, it holds {pending}");
    }

    println!("   draining with dispatch on");
    let mut w = world.spawn("drain", true)?;
    let t0 = w.started_ms;
    let mut samples: Vec<(i64, u64)> = Vec::new();
    let mut last = -1;
    let mut moved = Instant::now();
    let mut tick = 0u64;
    loop {
        w.alive()?;
        if let Some(kb) = proc_kb(w.pid, "VmRSS:") {
            samples.push((now_ms() - t0, kb));
        }
        // The count costs a query: every 5th sample (500 ms).
        if tick.is_multiple_of(5) {
            let sent = world
                .count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
                .await?;
            if sent >= expected as i64 {
                break;
            }
            if sent != last {
                last = sent;
                moved = Instant::now();
            } else if moved.elapsed() > NO_PROGRESS {
                bail!(
                    "backlog drain stuck at {sent} of {expected} for {} s; its log:\n{}",
                    NO_PROGRESS.as_secs(),
                    w.log_tail()
                );
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hwm = w.hwm_kb();
    let cpu = w.cpu_secs()?;
    w.stop().await?;
    world.check_all_sent(expected).await?;
    let end = world
        .max_ms("SELECT MAX(sent_at) FROM deliveries WHERE status = 'sent'")
        .await?;
    world
        .write_sent_series(t0, &ctx.opts.out.join("backlog-postgres.csv"))
        .await?;
    let mut csv = String::from("ms_since_start,rss_kb\n");
    for (ms, kb) in &samples {
        let _ = writeln!(csv, "{ms},{kb}");
    }
    std::fs::write(ctx.opts.out.join("backlog-postgres-rss.csv"), csv)?;
    let max_sampled = samples.iter().map(|s| s.1).max().unwrap_or(0);
    push(
        ctx,
        Row {
            id: "8",
            what: format!("backlog drain: {expected} pending ({n} events x {USERS} users)"),
            backend: "postgres",
            n: expected,
            unit: "mails/s",
            secs: (end - t0) as f64 / 1000.0,
            mails: true,
            cpu_per_1k: Some(cpu / (expected as f64 / 1000.0)),
            rss_kb: Some(hwm),
            note: format!(
                "VmRSS sampled every 100 ms: max {} MiB; the ingesting worker took {:.1} s to stop after SIGTERM",
                mib(max_sampled),
                ingest_stop.as_secs_f64()
            ),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), 50.0);
        assert_eq!(super::percentile(&v, 99.0), 99.0);
        assert_eq!(super::percentile(&v, 100.0), 100.0);
    }

    #[test]
    fn only_takes_prefixes_before_a_dash() {
        assert!(super::selects("e2e", "e2e-postgres-x2"));
        assert!(super::selects("e2e-postgres", "e2e-postgres-x2"));
        assert!(!super::selects("e2e-post", "e2e-postgres"));
    }
}
